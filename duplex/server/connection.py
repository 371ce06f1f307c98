"""One connection lifecycle for every conversation socket (`/ws`, `/api/chat`, and the next ones).

`serve_socket` owns the socket from the upgrade to the last byte: it admits it against
`--max-connections` (counted in the app's socket set before the first await, so a burst cannot
overshoot; past the cap the codec's `full` refusal, close 1013), prepares the WebSocketResponse (message
limit from the settings), counts it in the `duplex_connections_open{endpoint}` gauge, runs a send loop
that drains the codec's `Outbox` (audio is encoded at send time, so queued audio can still be silenced),
hands every received message to the codec, runs the start timeout while the codec `awaits_start` (one
`call_later` timer, armed and cancelled as the codec's state changes, never polled; on expiry the codec
explains, then close 1008), applies the slow-reader policy (close 1008), flushes the last queued
messages before a policy close, and tears down in one place (codec closed, gauge decremented, socket
removed). Every refusal is counted in `duplex_connections_refused_total{endpoint, reason}`.

A protocol plugs in with a `SocketCodec`: how its messages are read and written, nothing about the
socket's life. Adding a protocol means adding a codec, not a handler.

Recording (`--record`) hooks in here for every codec alike: the lifecycle gives each codec its
socket's `ConversationRecorder` (`codec.recorder`, before `on_open`), logs every received message to it,
calls the receipt of every assistant audio frame it sends, and closes it at teardown. The codec marks
conversations and hands over the audio (`recording/recorder.py`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import typing as tp
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from . import capacity
from .metrics import ServerMetrics
from .outbox import Outbox, SlowReader
from .recording import NULL_RECORDER, ConversationRecorder
from .state import METRICS, RECORDINGS, SETTINGS, SOCKETS

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 1.0   # how long a policy close waits for the message that explains it


@dataclass(frozen=True)
class Refusal:
    """`on_open` said no: send `last_message` (if any), then close with `close_code` and `reason`.

    `label` is the `reason` label of duplex_connections_refused_total (a short fixed word).
    """
    close_code: int
    reason: bytes
    last_message: str | bytes | None = None
    label: str = "refused"


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
    protocols: tuple[str, ...] = ()    # WebSocket subprotocols this endpoint may select (browsers need one echoed)
    slow_reader_reason: bytes = b"client too slow"
    outbox: Outbox
    # The socket's recorder, set by the lifecycle before `on_open` (NULL_RECORDER when the server does not
    # record). The codec calls its begin/end/user_audio/message_out/assistant_audio (see recording/recorder.py).
    recorder: ConversationRecorder = NULL_RECORDER

    @abc.abstractmethod
    def on_open(self, request: web.Request) -> Refusal | None:
        """The socket is upgraded: set up the conversation (and `outbox`), or refuse it."""

    def as_recorded(self, data: str) -> str:
        """A received text message as the recording keeps it (audio is kept once, in the WAV: a protocol that
        carries audio in text messages leaves it out here)."""
        return data

    def full(self, request: web.Request, reason: str) -> Refusal:
        """`--max-connections` sockets are open: this protocol's refusal (by default the close alone)."""
        return Refusal(1013, reason.encode(), label="max_connections")

    @property
    def awaits_start(self) -> bool:
        """True while the socket has no conversation going: the start timeout runs (False: never)."""
        return False

    def on_start_timeout(self, timeout_s: float) -> bytes:
        """No conversation within the start timeout: queue what explains it; returns the 1008 close reason."""
        return f"start timeout: no conversation within {timeout_s:g} s".encode()

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
    async def encode_outgoing(self, kind: str, payload: tp.Any) -> str | bytes | None:
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
    settings = app[SETTINGS]
    sockets = app[SOCKETS]
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=codec.heartbeat,
                               protocols=codec.protocols)
    # The cap is checked and the socket counted with no await in between: the event loop runs one
    # handler at a time up to here, so a burst of upgrades cannot all see room for one more.
    if (settings.max_connections and len(sockets) >= settings.max_connections) or capacity.draining(app):
        full = codec.full(request, "server shutting down: try again (another worker will take it)"
                          if capacity.draining(app) else
                          f"server full: {len(sockets)} connections open, try again later")
        await ws.prepare(request)
        await _refuse(app, ws, codec, full)
        return ws
    sockets.add(ws)
    store = app.get(RECORDINGS)
    if store is not None:
        codec.recorder = store.for_socket(codec.endpoint)
    try:
        await ws.prepare(request)
        refusal = codec.on_open(request)
        if refusal is not None:
            await _refuse(app, ws, codec, refusal)
            return ws
        await _Connection(ws, codec, settings.start_timeout_s).run(app)
    finally:
        sockets.discard(ws)
        capacity.socket_closed(app)   # a drain waits for the last one
    return ws


async def _refuse(app: web.Application, ws: web.WebSocketResponse, codec: SocketCodec, refusal: Refusal) -> None:
    app[METRICS].refused.labels(codec.endpoint, refusal.label).inc()
    if refusal.last_message is not None:
        await _send(ws, refusal.last_message)
    await ws.close(code=refusal.close_code, message=refusal.reason)


async def _send(ws: web.WebSocketResponse, data: str | bytes) -> None:
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


class _Connection:
    def __init__(self, ws: web.WebSocketResponse, codec: SocketCodec, start_timeout_s: float):
        self.ws = ws
        self.codec = codec
        self.drained = asyncio.Event()   # clear while the sender holds a message; set once all queued are sent
        self.drained.set()
        self.start_timeout_s = start_timeout_s
        self.start_timer: asyncio.TimerHandle | None = None   # armed while the codec awaits a start
        self.expiry: asyncio.Task | None = None               # the timer fired: explain, flush, close 1008
        self.sender: asyncio.Task | None = None

    async def run(self, app: web.Application) -> None:
        ws, codec = self.ws, self.codec
        metrics = app[METRICS]
        gauge = metrics.connections.labels(codec.endpoint)
        gauge.inc()
        close: tuple[int, bytes] | None = None
        try:
            greeting = codec.greeting()
            if greeting is not None:
                await _send(ws, greeting)   # before the sender starts, so nothing queued overtakes it
            sender = self.sender = asyncio.create_task(self._send_loop())
            self._update_start_timer(metrics)
            await self._receive_loop(sender, metrics)
        except CloseConnection as exc:
            close = (exc.code, exc.reason)
        except Exception:
            log.exception("%s: internal error", codec.endpoint)
            codec.on_error()
            close = (1011, b"internal error")
        finally:
            self._cancel_start_timer()
            try:
                codec.on_close()
            finally:   # the connection leaves the gauge even if the codec's teardown fails
                gauge.dec()
                codec.recorder.close("disconnect")   # whatever the codec left open is completed
        try:
            await self._close(close)
        finally:
            if self.expiry is not None and not self.expiry.done():   # only if we were cancelled
                self.expiry.cancel()
            if self.sender is not None:
                self.sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.sender   # its exception (a slow reader, a reset connection) was read or does not matter

    async def _close(self, close: tuple[int, bytes] | None) -> None:
        sender = self.sender
        if sender is None:
            return
        if self.expiry is not None:
            await self.expiry   # it flushes the explanation and closes the socket 1008
            return
        if sender.done() and not sender.cancelled() and isinstance(sender.exception(), SlowReader):
            close = (1008, self.codec.slow_reader_reason)
        if close is not None and not self.ws.closed:
            await self._flush(sender)
            await self.ws.close(code=close[0], message=close[1])

    async def _receive_loop(self, sender: asyncio.Task, metrics: ServerMetrics) -> None:
        async for msg in self.ws:
            if self.expiry is not None:   # timed out: what the client sends now is too late
                break
            if msg.type == WSMsgType.TEXT:
                self.codec.recorder.message_in(self.codec.as_recorded(msg.data))
                self.codec.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.codec.recorder.message_in(msg.data)
                self.codec.on_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("%s: socket error %s", self.codec.endpoint, self.ws.exception())
                break
            if sender.done():   # the sender gave up (slow reader, socket gone): so does the connection
                break
            self._update_start_timer(metrics)

    # --- the start timeout -------------------------------------------------------------------
    def _update_start_timer(self, metrics: ServerMetrics) -> None:
        """Arms the timer when the codec starts waiting for a conversation (open, after `stop`), cancels it
        when one starts; a message that changes nothing leaves the deadline where it was."""
        waiting = self.codec.awaits_start and self.start_timeout_s > 0 and self.expiry is None
        if waiting and self.start_timer is None:
            loop = asyncio.get_running_loop()
            self.start_timer = loop.call_later(self.start_timeout_s, self._start_timed_out, metrics)
        elif not waiting:
            self._cancel_start_timer()

    def _cancel_start_timer(self) -> None:
        if self.start_timer is not None:
            self.start_timer.cancel()
            self.start_timer = None

    def _start_timed_out(self, metrics: ServerMetrics) -> None:
        self.start_timer = None
        metrics.start_timeouts.labels(self.codec.endpoint).inc()
        reason = self.codec.on_start_timeout(self.start_timeout_s)
        log.info("%s: closed, %s", self.codec.endpoint, reason.decode(errors="replace"))
        self.expiry = asyncio.create_task(self._close_expired(reason))

    async def _close_expired(self, reason: bytes) -> None:
        """Runs beside the receive loop: aiohttp's `close` wakes a pending `receive` (it sees CLOSING)."""
        if self.sender is not None:
            await self._flush(self.sender)
        await self.ws.close(code=1008, message=reason)

    async def _send_loop(self) -> None:
        outbox = self.codec.outbox
        while True:
            kind, payload, receipt = await outbox.get_with_receipt()
            self.drained.clear()     # taken from the outbox but not yet on the wire
            if self.ws.closed:
                return
            data = await self.codec.encode_outgoing(kind, payload)
            if data is not None:
                await _send(self.ws, data)
            if receipt is not None:  # a recording keeps what was sent, where it was played
                receipt(payload, data)
            if not len(outbox):
                self.drained.set()

    async def _flush(self, sender: asyncio.Task) -> None:
        """Gives the sender a moment to deliver the last messages (the error that explains a close),
        including one it has taken from the outbox and is still encoding or sending."""
        if sender.done() or (self.drained.is_set() and not len(self.codec.outbox)):
            return
        if len(self.codec.outbox):
            self.drained.clear()   # the sender sets it once the outbox is empty after a send
        drained = asyncio.create_task(self.drained.wait())
        try:
            await asyncio.wait({drained, sender}, timeout=FLUSH_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drained
