"""`POST /v1/realtime/client_secrets`: short-lived keys a web page uses instead of the server's token.

As OpenAI's GA API: the body may carry `expires_after` (`{"anchor": "created_at", "seconds": 10..7200}`,
default 600) and a `session` configuration, applied when a call made with the secret starts (as a
`session.update`, whose `session.updated` is the first thing on the data channel after `session.created`).
The answer is `{"value": "ek_…", "expires_at": <unix s>, "session": {…}}`.

A secret is 32 random bytes (`secrets.token_urlsafe`), good for one call (`POST /v1/realtime/calls`) and
nothing else (not the WebSocket, not /recordings), spent when a call is created with it, and forgotten at
its expiry. Values are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import typing as tp
from dataclasses import dataclass

from aiohttp import web

from .... import protocol
from ...auth import token_ok
from ..realtime import parse_session_update

DEFAULT_TTL_S = 600
MIN_TTL_S, MAX_TTL_S = 10, 7200        # OpenAI's bounds
MAX_OUTSTANDING = 10_000               # unspent, unexpired secrets at once (a loop of requests cannot grow memory)
PREFIX = "ek_"                         # OpenAI's ephemeral keys look like this


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: float        # unix seconds
    session: dict | None     # the `session` given at creation: applied when the call starts


class ClientSecrets:
    """The unspent secrets of one server (`app[CLIENT_SECRETS]`)."""

    def __init__(self, clock: tp.Callable[[], float] = time.time):
        self.clock = clock
        self._live: dict[str, ClientSecret] = {}

    def issue(self, ttl_s: float, session: dict | None) -> ClientSecret | None:
        """A new secret, or None when MAX_OUTSTANDING are live."""
        self._forget_expired()
        if len(self._live) >= MAX_OUTSTANDING:
            return None
        secret = ClientSecret(PREFIX + secrets.token_urlsafe(32), self.clock() + ttl_s, session)
        self._live[secret.value] = secret
        return secret

    def find(self, value: str) -> ClientSecret | None:
        """The live secret with this value (constant-time compare), or None: unknown, spent or expired."""
        self._forget_expired()
        found = None
        for known, secret in self._live.items():   # every live one compared, in constant time each
            if hmac.compare_digest(known.encode(), value.encode()):
                found = secret
        return found

    def spend(self, secret: ClientSecret) -> None:
        self._live.pop(secret.value, None)

    def __len__(self) -> int:
        return len(self._live)

    def _forget_expired(self) -> None:
        now = self.clock()
        for value in [v for v, s in self._live.items() if s.expires_at <= now]:
            del self._live[value]


CLIENT_SECRETS = web.AppKey("client_secrets", ClientSecrets)


def http_error(status: int, code: str, message: str, param: str | None = None) -> web.Response:
    """An HTTP error in OpenAI's shape: `{"error": {"type", "code", "message", "param"}}`."""
    kind = "server_error" if status >= 500 and code == "internal" else "invalid_request_error"
    return web.json_response({"error": {"type": kind, "code": code, "message": message, "param": param}},
                             status=status)


async def handle_client_secrets(request: web.Request) -> web.Response:
    if not token_ok(request):
        return http_error(401, "unauthorized", "a valid token is required: Authorization: Bearer <the server's token>")
    try:
        body = json.loads(await request.text() or "{}")
    except ValueError:
        return http_error(400, "bad_message", "the body must be JSON")
    if not isinstance(body, dict):
        return http_error(400, "bad_message", "the body must be a JSON object")
    unknown = sorted(set(body) - {"expires_after", "session"})
    if unknown:
        return http_error(400, "bad_message", f"unknown parameter {unknown[0]}", unknown[0])
    ttl = _ttl(body.get("expires_after"))
    if isinstance(ttl, web.Response):
        return ttl
    session = body.get("session")
    if session is not None:
        update = parse_session_update(session, protocol.MODES)
        bad = [(param, message) for param, code, message in update.refused if code == "bad_message"]
        if bad:
            return http_error(400, "bad_message", bad[0][1], bad[0][0])
    secret = request.app[CLIENT_SECRETS].issue(ttl, session)
    if secret is None:
        return http_error(503, "capacity", f"{MAX_OUTSTANDING} client secrets are outstanding; try again later")
    return web.json_response({"value": secret.value, "expires_at": int(secret.expires_at),
                              "session": {"type": "realtime", **(session or {})}})


def _ttl(expires_after: tp.Any) -> float | web.Response:
    if expires_after is None:
        return DEFAULT_TTL_S
    if not isinstance(expires_after, dict) or expires_after.get("anchor", "created_at") != "created_at":
        return http_error(400, "bad_message", 'expires_after must be {"anchor": "created_at", "seconds": N}',
                          "expires_after")
    seconds = expires_after.get("seconds", DEFAULT_TTL_S)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not MIN_TTL_S <= seconds <= MAX_TTL_S:
        return http_error(400, "bad_message", f"expires_after.seconds must be {MIN_TTL_S} to {MAX_TTL_S}",
                          "expires_after.seconds")
    return float(seconds)
