"""Assistant audio encoded to Ogg Opus in worker processes, off the event loop and the model thread.

sphn's Opus writer holds the GIL (two threads encode no faster than one), and an 80 ms frame costs
~0.75 ms to encode: 48 conversations would take ~36 ms of every 80 ms from the one GIL that the event
loop and the model thread already share. `OpusPool` runs the writers in `--opus-workers` spawned
processes (numpy + sphn only); each connection's stream lives in one of them, so its pages stay in order.

Requests made in one turn of the event loop (a tick delivers every conversation's frame at once) go to a
worker as one message; a reader thread per worker hands the pages back to the loop. With no workers,
`inline_encoder` encodes on the loop, as before.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import multiprocessing
import threading
import typing as tp
from dataclasses import dataclass, field

import numpy as np

from ..audio import OpusEncoder, Pcm16Encoder
from . import opus_worker

log = logging.getLogger(__name__)


class AudioEncoder(tp.Protocol):
    """A connection's outgoing audio encoder: PCM frames in, wire bytes out, in order."""

    async def encode(self, pcm: np.ndarray) -> bytes: ...

    def close(self) -> None: ...


class EncodeError(RuntimeError):
    """The worker could not encode (or is gone); the connection using it is closed."""


@dataclass
class _InlineEncoder:
    encoder: OpusEncoder | Pcm16Encoder

    async def encode(self, pcm: np.ndarray) -> bytes:
        return self.encoder.encode(pcm)

    def close(self) -> None:
        pass


def audio_encoder(pool: OpusPool | None, codec: str) -> AudioEncoder:
    """A connection's encoder: Opus in the pool when there is one; pcm16 (cheap), or Opus without a
    pool, on the event loop."""
    if codec == "opus":
        return pool.encoder() if pool is not None else _InlineEncoder(OpusEncoder())
    return _InlineEncoder(Pcm16Encoder())


@dataclass
class _Worker:
    connection: tp.Any                         # multiprocessing Connection, the parent's end
    process: tp.Any
    reader: threading.Thread | None = None
    batch: list[tuple[int, np.ndarray | None]] = field(default_factory=list)
    waiting: dict[int, collections.deque[asyncio.Future[bytes]]] = field(default_factory=dict)
    streams: int = 0
    alive: bool = True


class OpusPool:
    def __init__(self, workers: int):
        self.size = workers
        self._workers: list[_Worker] = []
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")   # no fork of a process that holds torch and threads
        for index in range(self.size):
            parent, child = context.Pipe()
            process = context.Process(target=opus_worker.serve, args=(child,), daemon=True,
                                      name=f"duplex-opus-{index}")
            process.start()
            child.close()
            worker = _Worker(parent, process)
            worker.reader = threading.Thread(target=self._read, args=(worker,), daemon=True,
                                             name=f"opus-reader-{index}")
            worker.reader.start()
            self._workers.append(worker)
        log.info("Opus encoding in %d worker process(es)", self.size)

    async def stop(self) -> None:
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.connection.send(None)
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            await loop.run_in_executor(None, worker.process.join, 5.0)
            if worker.process.is_alive():
                worker.process.kill()
            worker.connection.close()
            if worker.reader is not None:
                await loop.run_in_executor(None, worker.reader.join, 5.0)
            self._fail(worker, "the Opus pool stopped")
        self._workers.clear()

    def encoder(self) -> AudioEncoder:
        """A new stream on the worker with the fewest streams."""
        worker = min(self._workers, key=lambda w: w.streams)
        worker.streams += 1
        return _PooledEncoder(self, worker, next(self._ids))

    # --- on the event loop -----------------------------------------------------------------
    def _request(self, worker: _Worker, stream: int, pcm: np.ndarray | None) -> asyncio.Future[bytes] | None:
        worker.batch.append((stream, pcm))
        future = None
        if pcm is not None:
            assert self._loop is not None
            future = self._loop.create_future()
            if not worker.alive:
                future.set_exception(EncodeError("the Opus worker process is gone"))
            worker.waiting.setdefault(stream, collections.deque()).append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)   # after every request of this loop turn
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        for worker in self._workers:
            if worker.batch and worker.alive:
                batch, worker.batch = worker.batch, []
                try:
                    worker.connection.send(batch)
                except (OSError, ValueError) as exc:
                    self._fail(worker, f"cannot reach the Opus worker: {exc}")

    def _on_replies(self, worker: _Worker, replies: list[tuple[int, bytes | str]]) -> None:
        for stream, data in replies:
            queue = worker.waiting.get(stream)
            if not queue:
                continue
            future = queue.popleft()
            if not queue:
                del worker.waiting[stream]
            if future.done():   # its connection went away meanwhile
                continue
            if isinstance(data, str):
                future.set_exception(EncodeError(data))
            else:
                future.set_result(data)

    def _fail(self, worker: _Worker, message: str) -> None:
        worker.alive = False
        for queue in worker.waiting.values():
            for future in queue:
                if not future.done():
                    future.set_exception(EncodeError(message))
        worker.waiting.clear()

    # --- reader thread ---------------------------------------------------------------------
    def _read(self, worker: _Worker) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            try:
                replies = worker.connection.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):   # the loop may be closed at shutdown
                    loop.call_soon_threadsafe(self._fail, worker, "the Opus worker process ended")
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_replies, worker, replies)


@dataclass
class _PooledEncoder:
    pool: OpusPool
    worker: _Worker
    stream: int
    closed: bool = False

    async def encode(self, pcm: np.ndarray) -> bytes:
        future = self.pool._request(self.worker, self.stream, np.asarray(pcm, dtype=np.float32))
        assert future is not None
        return await future

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.worker.streams -= 1
            self.pool._request(self.worker, self.stream, None)
