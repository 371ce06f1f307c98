"""One connection lifecycle for every conversation socket (`/ws`, `/api/chat`, and the next ones).

`serve_socket` owns the socket from the upgrade to the last byte: it prepares the WebSocketResponse
(message limit from the settings), registers it in the app's socket set and the
`duplex_connections_open{endpoint}` gauge, runs a send loop that drains the codec's `Outbox` (audio is
encoded at send time, so queued audio can still be silenced), hands every received message to the
codec, applies the slow-reader policy (close 1008), flushes the last queued messages before a policy
close, and tears down in one place (codec closed, gauge decremented, socket removed).

A protocol plugs in with a `SocketCodec`: how its messages are read and written, nothing about the
socket's life. Adding a protocol means adding a codec, not a handler.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import typing as tp
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from .outbox import Outbox, SlowReader
from .state import METRICS, SETTINGS, SOCKETS

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 1.0   # how long a policy close waits for the message that explains it


@dataclass(frozen=True)
class Refusal:
    """`on_open` said no: send `last_message` (if any), then close with `close_code` and `reason`."""
    close_code: int
    reason: bytes
    last_message: str | bytes | None = None


class CloseConnection(Exception):
    """Raised by a codec's `on_text`/`on_binary`: queued messages are flushed, then the socket is closed."""

    def __init__(self, code: int, reason: bytes):
        super().__init__(reason.decode(errors="replace"))
        self.code = code
        self.reason = reason


class SocketCodec(abc.ABC):
    """One socket protocol's messages: what a connection is opened with, reads and writes.

    Called on the event loop only, and never given the socket: the codec queues outgoing messages in
    `outbox` as ("text", str) or ("audio", PCM) items, and `encode_outgoing` turns each into a frame
    when the send loop takes it.
    """

    endpoint: str                      # the `endpoint` label of duplex_connections_open
    heartbeat: float | None = None     # seconds between WebSocket pings, None for none
    slow_reader_reason: bytes = b"client too slow"
    outbox: Outbox

    @abc.abstractmethod
    def on_open(self, request: web.Request) -> Refusal | None:
        """The socket is upgraded: set up the conversation (and `outbox`), or refuse it."""

    def greeting(self) -> str | bytes | None:
        """A first message sent before anything queued (Moshi's 0x00 handshake); None for none."""
        return None

    @abc.abstractmethod
    def on_text(self, data: str) -> None:
        """A text message from the client; may raise CloseConnection."""

    @abc.abstractmethod
    def on_binary(self, data: bytes) -> None:
        """A binary message from the client; may raise CloseConnection."""

    @abc.abstractmethod
    def encode_outgoing(self, kind: str, payload: tp.Any) -> str | bytes | None:
        """One outbox item as the frame to send (str: text frame, bytes: binary), or None to send nothing."""

    def on_error(self) -> None:
        """An unexpected exception ended the receive loop; the socket is closed 1011 after the flush."""
        return None   # by default, nothing to say: the close code tells

    @abc.abstractmethod
    def on_close(self) -> None:
        """The connection is over: free the conversation at once and report its dropped frames."""


async def serve_socket(request: web.Request, codec: SocketCodec) -> web.WebSocketResponse:
    """The whole life of one conversation socket; the aiohttp handler of every socket endpoint."""
    app = request.app
    ws = web.WebSocketResponse(max_msg_size=app[SETTINGS].max_message_bytes, heartbeat=codec.heartbeat)
    await ws.prepare(request)
    refusal = codec.on_open(request)
    if refusal is not None:
        if refusal.last_message is not None:
            await _send(ws, refusal.last_message)
        await ws.close(code=refusal.close_code, message=refusal.reason)
        return ws
    await _Connection(ws, codec).run(app)
    return ws


async def _send(ws: web.WebSocketResponse, data: str | bytes) -> None:
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, codec: SocketCodec):
        self.ws = ws
        self.codec = codec
        self.drained = asyncio.Event()   # set by the sender whenever it has sent everything queued

    async def run(self, app: web.Application) -> None:
        ws, codec = self.ws, self.codec
        gauge = app[METRICS].connections.labels(codec.endpoint)
        app[SOCKETS].add(ws)
        gauge.inc()
        sender: asyncio.Task | None = None
        close: tuple[int, bytes] | None = None
        try:
            greeting = codec.greeting()
            if greeting is not None:
                await _send(ws, greeting)   # before the sender starts, so nothing queued overtakes it
            sender = asyncio.create_task(self._send_loop())
            await self._receive_loop(sender)
        except CloseConnection as exc:
            close = (exc.code, exc.reason)
        except Exception:
            log.exception("%s: internal error", codec.endpoint)
            codec.on_error()
            close = (1011, b"internal error")
        finally:
            try:
                codec.on_close()
            finally:   # the socket leaves the books even if the codec's teardown fails
                app[SOCKETS].discard(ws)
                gauge.dec()
        if sender is None:
            return
        if sender.done() and not sender.cancelled() and isinstance(sender.exception(), SlowReader):
            close = (1008, codec.slow_reader_reason)
        if close is not None and not ws.closed:
            await self._flush(sender)
            await ws.close(code=close[0], message=close[1])
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender   # its exception (a slow reader, a reset connection) was read above or does not matter

    async def _receive_loop(self, sender: asyncio.Task) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.codec.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.codec.on_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("%s: socket error %s", self.codec.endpoint, self.ws.exception())
                break
            if sender.done():   # the sender gave up (slow reader, socket gone): so does the connection
                break

    async def _send_loop(self) -> None:
        outbox = self.codec.outbox
        while True:
            kind, payload = await outbox.get()
            if self.ws.closed:
                return
            data = self.codec.encode_outgoing(kind, payload)
            if data is not None:
                await _send(self.ws, data)
            if not len(outbox):
                self.drained.set()

    async def _flush(self, sender: asyncio.Task) -> None:
        """Gives the sender a moment to deliver the last messages (the error that explains a close)."""
        if not len(self.codec.outbox) or sender.done():
            return
        self.drained.clear()
        drained = asyncio.create_task(self.drained.wait())
        try:
            await asyncio.wait({drained, sender}, timeout=FLUSH_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drained
