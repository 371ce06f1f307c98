"""`GET /config`: the conversation config a client may set here, for the browser page's settings.

The schema's keys (`duplex.config.CONFIG_SCHEMA`: type, range, default, doc) and, per loaded engine, what
it takes (`Engine.config_offer`): the keys at `start`, the keys `configure` takes mid-conversation, and the
voices `config.voice` may name. Public like `/health` (it names no conversation; `/health` already lists
a persona model's voices). The page builds its form from this, so a key or a voice added to the server
needs no change to the page.
"""

from __future__ import annotations

import typing as tp

from aiohttp import web

from ..config import CONFIG_SCHEMA, ConfigKey
from .state import ENGINES

_KINDS = {str: "string", float: "number", int: "integer", bool: "boolean", list: "array"}


def key_entry(key: ConfigKey) -> dict[str, tp.Any]:
    """One key as JSON: `type` is the JSON type; `low`/`high` bound a number (`high_open`: [low, high))."""
    entry: dict[str, tp.Any] = {"type": _KINDS[key.kind], "doc": key.doc, "default": key.default,
                                "default_doc": key.default_doc}
    if key.low is not None and key.high is not None:
        entry.update(low=key.low, high=key.high, high_open=key.high_open)
    return entry


def config_description(app: web.Application) -> dict[str, tp.Any]:
    engines = {}
    for name, engine in app[ENGINES].items():
        offer = engine.config_offer()
        # in schema order, so a form built from it lists the keys as the docs do
        engines[name] = {"start": [k for k in CONFIG_SCHEMA if k in offer.start_keys],
                         "configure": [k for k in CONFIG_SCHEMA if k in offer.configure_keys],
                         "voices": list(offer.voices), "default_voice": offer.default_voice}
    return {"keys": {name: key_entry(key) for name, key in CONFIG_SCHEMA.items()}, "engines": engines}


async def handle_config(request: web.Request) -> web.Response:
    return web.json_response(config_description(request.app))
