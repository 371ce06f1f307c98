"""Access control: the server's token, as `?token=` or `Authorization: Bearer`, compared in constant time."""

from __future__ import annotations

import hmac
import typing as tp

from aiohttp import web

from .state import SETTINGS


def token_ok(request: web.Request) -> bool:
    expected = request.app[SETTINGS].token
    if not expected:
        return True
    given = request.query.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected.encode())


Handler = tp.Callable[[web.Request], tp.Awaitable[web.StreamResponse]]


def require_token(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not token_ok(request):
            raise web.HTTPUnauthorized(text="unauthorized: a valid ?token= or Authorization: Bearer is required")
        return await handler(request)
    return wrapped
