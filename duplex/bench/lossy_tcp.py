"""A TCP relay that makes a byte stream suffer packet loss the way TCP does (the model: `link.py`).

Each accepted connection is forwarded to `target`; each direction reads what arrives, cuts each read into
segments of at most `mss` bytes, and gives each segment a delivery time: its arrival plus the one-way delay
plus, when the link loses it, the retransmission timeouts, and never before the segment ahead of it
(bytes stay in order, so one loss holds up everything behind it). A writer task delivers on that schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .link import LinkModel, RelayStats
from .lossy_udp import Tap

logger = logging.getLogger(__name__)
READ_BYTES = 65536


class TcpRelay:
    """`await TcpRelay.start(target, model)`; clients connect to `.address`; `await .close()`."""

    def __init__(self, target: tuple[str, int], model: LinkModel, tap: Tap | None = None):
        self.tap = tap   # each segment: direction, bytes, when read, when due to be written
        self.target = target
        self.model = model
        self.stats = RelayStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections = 0

    @classmethod
    async def start(cls, target: tuple[str, int], model: LinkModel, host: str = "127.0.0.1",
                    tap: Tap | None = None) -> "TcpRelay":
        relay = cls(target, model, tap)
        relay._server = await asyncio.start_server(relay._accept, host, 0)
        return relay

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._connections += 1
        salt = 2 * self._connections   # each connection, each direction: its own random stream
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError as exc:
            logger.warning("relay could not reach %s: %s", self.target, exc)
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        directions = [self._spawn(self._direction(client_r, server_w, self.model.fork(salt, "up"), "up")),
                      self._spawn(self._direction(server_r, client_w, self.model.fork(salt + 1, "down"), "down"))]
        await asyncio.gather(*directions, return_exceptions=True)
        for writer in (client_w, server_w):
            writer.close()
            self._writers.discard(writer)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, model: LinkModel,
                         name: str) -> None:
        """Reads, schedules each segment, and delivers in order; ends when the reader's side closes."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = self._spawn(self._deliver(queue, writer))
        loop = asyncio.get_running_loop()
        last_due = 0.0
        try:
            while data := await reader.read(READ_BYTES):
                now = loop.time()
                for offset in range(0, len(data), model.mss):
                    segment = data[offset:offset + model.mss]
                    stall = model.retransmission_stall_s()
                    self.stats.packets[name] += 1
                    self.stats.bytes[name] += len(segment)
                    if stall:
                        self.stats.lost[name] += 1
                        self.stats.stall_ms[name] += stall * 1000
                    last_due = max(last_due, now + model.one_way_s + stall)
                    if self.tap is not None:
                        self.tap(name, segment, now, last_due)
                    queue.put_nowait((last_due, segment))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await deliver

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, segment = item
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            writer.write(segment)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
