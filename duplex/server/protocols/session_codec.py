"""`SessionCodec`: the socket side of a protocol whose messages a `Session` reads (/ws and /v1/realtime)."""

from __future__ import annotations

from ..connection import CloseConnection, SocketCodec
from ..session import Session, TooManyBadMessages


class SessionCodec(SocketCodec):
    """A codec whose messages a `Session` (or a subclass) reads: /ws and /v1/realtime. Past the session's
    bad-message limit the socket is closed 1008."""
    heartbeat = 30.0
    slow_reader_reason = b"client too slow: stopped reading"
    session: Session

    def on_text(self, data: str) -> None:
        try:
            self.session.handle_text(data)
        except TooManyBadMessages as exc:
            raise CloseConnection(1008, str(exc).encode()) from None

    def on_binary(self, data: bytes) -> None:
        try:
            self.session.handle_binary(data)
        except TooManyBadMessages as exc:
            raise CloseConnection(1008, str(exc).encode()) from None
