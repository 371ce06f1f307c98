"""`/v1/realtime`: the OpenAI Realtime API (GA) over both engines (docs/realtime.md).

`RealtimeCodec` is this protocol's side of the connection lifecycle (`connection.py`): JSON text
events both ways, read and written by a `RealtimeSession`. The `openai` SDK connects to
`{websocket_base_url}/realtime?model=...` with `Authorization: Bearer <api key>`, so a client pointed
at `ws://HOST:PORT/v1` with the server's token as its key lands here. `model` picks the engine
(`duplex`, `cascade`, `auto`; default, and any other name such as `gpt-realtime`: `auto`).
Browsers, which cannot set headers, give the key as
OpenAI's browser clients do: subprotocols `realtime` and `openai-insecure-api-key.<key>` (the server
selects `realtime`). The conversation starts when the socket opens
(`session.created`); the start timeout runs until the client's first event. Assistant audio is queued as
PCM and encoded as `response.output_audio.delta` (base64 pcm16) when sent, under the response that the
marker before it names.
"""

from __future__ import annotations

import hmac
import json
import typing as tp

from aiohttp import web

from .... import protocol
from ....audio import float_to_pcm16
from . import events as rt
from ...auth import token_ok
from ...capacity import admitted_engine
from ...connection import Refusal, serve_socket
from .core import Response
from .session import RealtimeSession
from ...state import ENGINES, METRICS, SETTINGS
from ..session_codec import SessionCodec


async def handle_realtime(request: web.Request) -> web.StreamResponse:
    return await serve_socket(request, RealtimeCodec())


class RealtimeCodec(SessionCodec):
    endpoint = "realtime"
    protocols = ("realtime",)
    session: RealtimeSession

    def __init__(self) -> None:
        self.target: Response | None = None   # the response the next audio frames belong to (send order)

    def on_open(self, request: web.Request) -> Refusal | None:
        app = request.app
        model = request.query.get("model", "auto")
        if model not in protocol.MODES:
            model = "auto"   # an OpenAI model name (gpt-realtime, …): the server's default engine
        refusal = None
        if not (token_ok(request) or _subprotocol_key_ok(request)):
            refusal = ("unauthorized", "a valid token is required: Authorization: Bearer <the server's token> "
                                       "(the openai SDK's api_key)", "unauthorized", 1008)
        if refusal is not None:
            code, text, label, close = refusal
            app[METRICS].error(code)
            return Refusal(close, code.encode(), rt.error_event(code, text, None), label=label)
        self.session = RealtimeSession(app[ENGINES], app[METRICS], model,
                                       speech_threshold_dbfs=app[SETTINGS].speech_threshold_dbfs, recorder=self.recorder)
        self.session.auto_first = admitted_engine(request)
        self.outbox = self.session.outbox
        if not self.session.begin():
            return Refusal(1013, b"no engine slot free", self.session.last_error, label="no_slot")
        return None

    def as_recorded(self, data: str) -> str:
        """`input_audio_buffer.append` without its base64 audio (its size instead): the audio is the WAV's."""
        if '"input_audio_buffer.append"' not in data:   # base64 holds no quote: a cheap test
            return data
        try:
            event = json.loads(data)
            audio = event.pop("audio")
        except (ValueError, KeyError, TypeError, AttributeError):
            return data   # not an append after all (the codec answers it as it is)
        if isinstance(audio, str):
            event["audio_bytes"] = len(audio) * 3 // 4 - audio[-2:].count("=")
        return json.dumps(event)

    def full(self, request: web.Request, reason: str) -> Refusal:
        request.app[METRICS].error("capacity")
        return Refusal(1013, reason.encode(), rt.error_event("capacity", reason, None), label="max_connections")

    @property
    def awaits_start(self) -> bool:
        return not self.session.heard_client

    def on_start_timeout(self, timeout_s: float) -> bytes:
        self.session.send_error("not_started", f"no client event within {timeout_s:g} s of connecting; "
                                               "the socket is closed")
        return f"start timeout: no event within {timeout_s:g} s".encode()

    async def encode_outgoing(self, kind: str, payload: tp.Any) -> str | None:
        if kind == "response":
            self.target = payload
            return None
        if kind == "audio":
            if self.target is None:
                return None   # not queued outside a response; this is a frame cut loose by a restart
            return self.session.audio_delta(self.target, float_to_pcm16(payload))
        return payload

    def on_error(self) -> None:
        self.session.send_error("internal", "internal server error; the connection is closed")

    def on_close(self) -> None:
        self.session.close()


KEY_SUBPROTOCOL = "openai-insecure-api-key."


def _subprotocol_key_ok(request: web.Request) -> bool:
    """The key as a browser sends it: one of the offered subprotocols is `openai-insecure-api-key.<key>`."""
    expected = request.app[SETTINGS].token or ""
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return any(p.startswith(KEY_SUBPROTOCOL)
               and hmac.compare_digest(p.removeprefix(KEY_SUBPROTOCOL).encode(), expected.encode()) for p in offered)
