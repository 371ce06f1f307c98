"""`/ws`: one conversation socket speaking the duplex protocol (docs/protocol.md).

`DuplexCodec` is this protocol's side of the connection lifecycle (`connection.py`): text and binary
messages go to the connection's `Session`, whose `Outbox` the lifecycle drains (Opus or pcm16 encoded at
send time). Refusals are sent as an `error` then a close, so browsers (which cannot read an HTTP status
on a failed upgrade) can show the reason: a full server (`capacity`, 1013) as much as a bad token.
The start timeout runs while the session has no conversation (from `ready`, and again after `stop`).
"""

from __future__ import annotations

import typing as tp

from aiohttp import web

from ... import protocol
from ..auth import token_ok
from ..capacity import admitted_engine
from ..connection import Refusal, serve_socket
from ..opus_pool import AudioEncoder, audio_encoder
from ..session import Session
from ..state import ENGINES, METRICS, OPUS_POOL, SETTINGS
from .session_codec import SessionCodec


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """One conversation socket: refusals first (token, mode, codec), then the session's messages."""
    return await serve_socket(request, DuplexCodec())


class DuplexCodec(SessionCodec):
    endpoint = "ws"
    encoder: AudioEncoder

    def on_open(self, request: web.Request) -> Refusal | None:
        app = request.app
        mode = request.query.get("mode", "auto")
        codec = request.query.get("codec", "opus")
        refusal = None
        if not token_ok(request):
            refusal = ("unauthorized", "a valid token is required (?token= or Authorization: Bearer)", "unauthorized")
        elif mode not in protocol.MODES:
            refusal = ("bad_message", f"mode must be one of {', '.join(protocol.MODES)}", "bad_query")
        elif codec not in protocol.CODECS:
            refusal = ("bad_message", f"codec must be one of {', '.join(protocol.CODECS)}", "bad_query")
        if refusal is not None:
            code, text, label = refusal
            app[METRICS].error(code)
            return Refusal(1008, code.encode(), protocol.error("", code, text), label=label)
        self.session = Session(app[ENGINES], codec, app[METRICS], default_mode=mode,
                               speech_threshold_dbfs=app[SETTINGS].speech_threshold_dbfs, recorder=self.recorder)
        self.session.auto_first = admitted_engine(request)
        self.outbox = self.session.outbox
        self.encoder = audio_encoder(app.get(OPUS_POOL), codec)
        self.session.send_ready()
        return None

    def full(self, request: web.Request, reason: str) -> Refusal:
        request.app[METRICS].error("capacity")
        return Refusal(1013, reason.encode(), protocol.error("", "capacity", reason), label="max_connections")

    @property
    def awaits_start(self) -> bool:
        return self.session.conversation is None

    def on_start_timeout(self, timeout_s: float) -> bytes:
        self.session.send_error("not_started", f"no `start` within {timeout_s:g} s of opening the socket "
                                               "(or of `stop`); the socket is closed")
        return f"start timeout: no start within {timeout_s:g} s".encode()

    async def encode_outgoing(self, kind: str, payload: tp.Any) -> str | bytes | None:
        if kind == "audio":
            data = await self.encoder.encode(payload)
            return bytes([protocol.KIND_AUDIO]) + data if data else None   # Opus may hold a frame back
        return payload

    def on_error(self) -> None:
        self.session.send_error("internal", "internal server error; the connection is closed")

    def on_close(self) -> None:
        self.session.close()
        self.encoder.close()
