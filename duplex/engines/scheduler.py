"""The batch scheduler: fixed slots, one batched model step per tick, model work on one worker thread.

A tick runs as soon as every active slot has a frame, or when the oldest waiting frame has
waited `max_wait_ms` (so a slow or silent client never holds the others back). Slots without a
frame this tick are masked out (their state does not move). Queues are bounded: overflow drops
the oldest frame and is counted, never blocking. Results are handed back on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
import typing as tp
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class QueuedFrame:
    pcm: np.ndarray
    arrived: float  # time.monotonic()


@dataclass
class Slot:
    index: int
    owner: tp.Any = None                  # the engine stream holding the slot, None when free
    generation: int = 0                   # bumped on release/reset: stale results are discarded
    queue: collections.deque = field(default_factory=collections.deque)
    needs_reset: bool = True
    first_frame: bool = True
    dropped: int = 0


@dataclass
class TickEntry:
    slot: Slot
    frame: QueuedFrame | None
    reset: bool
    first: bool
    generation: int


class TickRunner(tp.Protocol):
    """The model side of the scheduler (e.g. DuplexRunner)."""

    def prepare(self, entries: list[TickEntry]) -> tp.Any: ...          # event loop: build the batch
    def execute(self, job: tp.Any) -> tp.Any: ...                       # worker thread: run the model
    def deliver(self, entries: list[TickEntry], result: tp.Any) -> None: ...  # event loop: hand out


class BatchScheduler:
    def __init__(self, runner: TickRunner, slots: int, *, max_wait_ms: float = 20.0,
                 max_queue_frames: int = 125, name: str = "duplex"):
        self.runner = runner
        self.slots = [Slot(i) for i in range(slots)]
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_frames = max_queue_frames
        self.name = name
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-model")
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.ticks = 0
        self.last_step_ms = 0.0
        self.on_tick: tp.Callable[[float, int], None] | None = None  # (step_ms, frames) for metrics

    # --- slots -------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return sum(slot.owner is not None for slot in self.slots)

    def has_free_slot(self) -> bool:
        return any(slot.owner is None for slot in self.slots)

    def acquire(self, owner: tp.Any) -> Slot | None:
        for slot in self.slots:
            if slot.owner is None:
                slot.owner = owner
                slot.queue.clear()
                slot.needs_reset = True
                slot.first_frame = True
                slot.dropped = 0
                self._wakeup.set()
                return slot
        return None

    def release(self, slot: Slot) -> None:
        slot.owner = None
        slot.generation += 1
        slot.queue.clear()
        slot.needs_reset = True
        self._wakeup.set()

    def reset(self, slot: Slot) -> None:
        """Wipe the slot's model state at the next tick; frames not yet consumed are discarded."""
        slot.queue.clear()
        slot.needs_reset = True
        slot.first_frame = True
        self._wakeup.set()

    def push(self, slot: Slot, pcm: np.ndarray) -> bool:
        """Queues one frame; returns False when the queue was full and the oldest frame was dropped."""
        dropped = len(slot.queue) >= self.max_queue_frames
        if dropped:
            slot.queue.popleft()
            slot.dropped += 1
        slot.queue.append(QueuedFrame(pcm, time.monotonic()))
        self._wakeup.set()
        return not dropped

    # --- worker-thread calls ---------------------------------------------------------------
    async def run_in_worker(self, fn: tp.Callable, *args: tp.Any) -> tp.Any:
        """Runs fn on the model thread, in order with the ticks (model state is touched there only)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    # --- the tick loop -----------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.worker.shutdown(wait=True, cancel_futures=True)

    def _due(self) -> float | None:
        """Seconds until the next tick is due: 0 = now, None = nothing to do."""
        owned = [slot for slot in self.slots if slot.owner is not None]
        waiting = [slot for slot in owned if slot.queue]
        if not waiting:
            return None
        if len(waiting) == len(owned):
            return 0.0
        oldest = min(slot.queue[0].arrived for slot in waiting)
        return max(0.0, oldest + self.max_wait - time.monotonic())

    async def _run(self) -> None:
        while True:
            due = self._due()
            if due is None or due > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=due)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a model failure must not kill the loop that serves everyone
                log.exception("%s tick failed; the affected frames are lost", self.name)
                await asyncio.sleep(0.01)

    async def _tick(self) -> None:
        entries: list[TickEntry] = []
        for slot in self.slots:
            frame = slot.queue.popleft() if (slot.owner is not None and slot.queue) else None
            if frame is None and not slot.needs_reset:
                continue
            entries.append(TickEntry(slot, frame, slot.needs_reset, frame is not None and slot.first_frame,
                                     slot.generation))
            slot.needs_reset = False
            if frame is not None:
                slot.first_frame = False
        job = self.runner.prepare(entries)
        started = time.perf_counter()
        result = await self.run_in_worker(self.runner.execute, job)
        self.last_step_ms = (time.perf_counter() - started) * 1000.0
        self.ticks += 1
        live = [e for e in entries if e.frame is not None and e.slot.generation == e.generation
                and e.slot.owner is not None]
        self.runner.deliver(live, result)
        if self.on_tick is not None:
            self.on_tick(self.last_step_ms, sum(e.frame is not None for e in entries))
