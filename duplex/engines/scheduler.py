"""The batch scheduler: fixed slots, one batched model step per tick, model work on one worker thread.

When a tick runs is `TickPolicy`'s decision: at once when every active slot has a frame (clients in
step), else when the oldest waiting frame has been held as long as its answer can afford: real clients
send at unrelated phases of the 80 ms frame, and a tick costs about the same whether it serves one frame
or all of them, so each tick should take every frame that can still make its deadline. Slots without a
frame this tick are masked out (their state does not move). Queues are bounded: overflow drops the
oldest frame and is counted, never blocking. Results are handed back on the event loop.

Work that is not a tick (a persona prompt's prefill) runs between ticks, in pieces that fit the time
until the next tick is due (`run_between_ticks`, `BetweenTicks`): meanwhile its slot is *preparing*,
its frames wait in its queue and it takes no part in ticks.

The seam: a `TickRunner` adapts one model to the scheduler (prepare a masked batch on the loop,
execute it on the model thread, deliver results on the loop); each slot is held by an owner of the
type that runner knows how to serve (`DuplexSlotOwner`, `SttSlotOwner`). The scheduler itself never
calls an owner.
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

from ..audio import FRAME_S

log = logging.getLogger(__name__)

OwnerT = tp.TypeVar("OwnerT")
JobT = tp.TypeVar("JobT")
ResultT = tp.TypeVar("ResultT")


@dataclass
class QueuedFrame:
    pcm: np.ndarray
    arrived: float  # time.monotonic()


@dataclass
class Slot(tp.Generic[OwnerT]):
    index: int
    owner: OwnerT | None = None           # the engine stream holding the slot, None when free
    generation: int = 0                   # bumped on release/reset: stale results are discarded
    queue: collections.deque[QueuedFrame] = field(default_factory=collections.deque)
    needs_reset: bool = True
    first_frame: bool = True
    dropped: int = 0
    preparing: bool = False               # being filled between ticks: its frames wait, it does not step


@dataclass
class TickEntry(tp.Generic[OwnerT]):
    slot: Slot[OwnerT]
    frame: QueuedFrame | None
    reset: bool
    first: bool
    generation: int


@dataclass
class Delivery(tp.Generic[OwnerT]):
    """A slot's result this tick: its owner (still holding the slot), index and input frame."""
    owner: OwnerT
    index: int
    frame: QueuedFrame


class TickRunner(tp.Protocol[OwnerT, JobT, ResultT]):
    """The model side of the scheduler (DuplexRunner, SttRunner)."""

    def prepare(self, entries: list[TickEntry[OwnerT]]) -> JobT:
        """Event loop: build the masked batch."""
        ...

    def execute(self, job: JobT) -> ResultT:
        """Model thread: run the batched step."""
        ...

    def deliver(self, deliveries: list[Delivery[OwnerT]], result: ResultT) -> None:
        """Event loop: hand each live slot its part of the result."""
        ...

    def fail(self, deliveries: list[Delivery[OwnerT]], error: Exception) -> None:
        """Event loop: the step failed; tell each live slot's owner that its frame was lost."""
        ...


class BetweenTicks(tp.Protocol):
    """Model work done between ticks, in pieces (a persona prefill: models/prefill.py)."""

    def min_cost_s(self) -> float:
        """Event loop: the expected time of the smallest piece `run` will do."""
        ...

    def run(self, budget_s: float) -> bool:
        """Model thread: do about `budget_s` of work (at least the smallest piece); True when all done."""
        ...


@dataclass
class _Pending:
    work: BetweenTicks
    done: asyncio.Future
    since: float                          # time.monotonic() of its last piece (or of its submission)


class TickPolicy:
    """How long a waiting frame may be held for more frames to join its tick.

    The budget: a frame's answer should be out within one frame period P (80 ms) of its arrival, so a
    frame may wait P - S - margin, S being the recent step time. While S <= P/2 that is the fewest ticks
    that answer every frame within P: each tick runs as late as its oldest frame allows and takes
    everything that has come. Past P/2 (a large active batch) the same rule shrinks the hold toward 0 (at
    S = P - margin) and ticks run nearly back to back: every frame is answered within about 2S, sooner than
    one tick per period would (P + S), at the price of a busy model thread; a batch still runs once per
    frame at most, so capacity is what S(N) <= P allows.
    `max_wait_ms` fixes the hold instead (the former rule: a fixed 20 ms).
    """

    def __init__(self, period_s: float = FRAME_S, margin_s: float = 0.005, max_wait_ms: float | None = None,
                 first_hold_s: float = 0.02, smoothing: float = 0.2):
        self.period_s = period_s
        self.margin_s = margin_s
        self.fixed_hold_s = None if max_wait_ms is None else max_wait_ms / 1000.0
        self.first_hold_s = first_hold_s      # until a step has been timed
        self.smoothing = smoothing
        self.step_s: float | None = None      # moving average of the step's wall time

    def observe_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else self.step_s + self.smoothing * (seconds - self.step_s)

    def hold_s(self) -> float:
        if self.fixed_hold_s is not None:
            return self.fixed_hold_s
        if self.step_s is None:
            return self.first_hold_s
        return max(0.0, self.period_s - self.step_s - self.margin_s)


class BatchScheduler(tp.Generic[OwnerT]):
    def __init__(self, runner: TickRunner[OwnerT, tp.Any, tp.Any], slots: int, *, max_wait_ms: float | None = None,
                 max_queue_frames: int = 125, name: str = "duplex"):
        self.runner = runner
        self.slots: list[Slot[OwnerT]] = [Slot(i) for i in range(slots)]
        self.policy = TickPolicy(max_wait_ms=max_wait_ms)
        self.max_queue_frames = max_queue_frames
        self.name = name
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{name}-model")
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.ticks = 0
        self.failed_ticks = 0                 # steps that raised: their frames are counted as dropped
        self.last_step_ms = 0.0
        self.on_tick: tp.Callable[[float, int], None] | None = None  # (step_ms, frames) for metrics
        self._calls: set[concurrent.futures.Future] = set()          # fire-and-forget model-thread calls
        self._active = 0     # slots with an owner
        self._waiting = 0    # owned slots with a frame queued (preparing slots excluded)
        self._preparing = 0  # owned slots being filled between ticks
        self._between: collections.deque[_Pending] = collections.deque()
        # Pieces of between-tick work: at most this long while others talk (their frames may wait that much
        # when a tick falls due mid-piece), and this long when nobody else is in a slot.
        self.between_max_s = 0.015
        self.between_alone_s = 0.25
        self.between_starved_s = FRAME_S   # a piece (between_max_s) runs after this long even when ticks leave no room
        self.between_runs = 0
        self._running: _Pending | None = None

    # --- slots -------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return self._active

    def has_free_slot(self) -> bool:
        return self._active < len(self.slots)

    def acquire(self, owner: OwnerT) -> Slot[OwnerT] | None:
        for slot in self.slots:
            if slot.owner is None:
                slot.owner = owner
                slot.queue.clear()
                slot.needs_reset = True
                slot.first_frame = True
                slot.dropped = 0
                self._active += 1
                self._wakeup.set()
                return slot
        return None

    def release(self, slot: Slot[OwnerT]) -> None:
        if slot.owner is not None:
            self._active -= 1
        self._clear_queue(slot)
        if slot.preparing:
            slot.preparing = False
            self._preparing -= 1
        slot.owner = None
        slot.generation += 1
        slot.needs_reset = True
        self._wakeup.set()

    def reset(self, slot: Slot[OwnerT]) -> None:
        """Wipe the slot's model state at the next tick; frames not yet consumed are discarded, and so is the
        result of a frame in the model now (it belongs to the stream the reset ended)."""
        self._clear_queue(slot)
        slot.generation += 1
        slot.needs_reset = True
        slot.first_frame = True
        self._wakeup.set()

    def begin_preparing(self, slot: Slot[OwnerT]) -> None:
        """The slot is filled between ticks from now on (by work that also wipes its state): its frames wait."""
        if slot.preparing:
            return
        if slot.queue:
            self._waiting -= 1
        slot.preparing = True
        slot.needs_reset = False
        self._preparing += 1
        self._wakeup.set()

    def end_preparing(self, slot: Slot[OwnerT]) -> None:
        """The slot is ready: its waiting frames go into the next ticks."""
        if not slot.preparing:
            return
        slot.preparing = False
        self._preparing -= 1
        if slot.queue:
            self._waiting += 1
        self._wakeup.set()

    async def run_between_ticks(self, work: BetweenTicks) -> None:
        """Runs `work` on the model thread between ticks, piece by piece, never making a tick wait for more
        than one piece; returns when it is done (cancelling the wait drops the work before its next piece)."""
        pending = _Pending(work, asyncio.get_running_loop().create_future(), time.monotonic())
        self._between.append(pending)
        self._wakeup.set()
        try:
            await asyncio.shield(pending.done)
        finally:
            if not pending.done.done():
                pending.done.cancel()
            if pending in self._between and pending is not self._running:
                self._between.remove(pending)
    def push(self, slot: Slot[OwnerT], pcm: np.ndarray) -> bool:
        """Queues one frame; returns False when the queue was full and the oldest frame was dropped."""
        dropped = len(slot.queue) >= self.max_queue_frames
        if dropped:
            slot.queue.popleft()
            slot.dropped += 1
        slot.queue.append(QueuedFrame(pcm, time.monotonic()))
        if len(slot.queue) == 1 and not slot.preparing:
            self._waiting += 1
            # Only a first waiting frame (it starts the hold) or the last slot's (a tick is due now) changes
            # when the next tick runs; waking the tick loop for every frame cost the event loop dearly.
            if self._waiting == 1 or self._waiting >= self._active - self._preparing:
                self._wakeup.set()
        return not dropped

    def _clear_queue(self, slot: Slot[OwnerT]) -> None:
        """Discards the slot's frames, preparing or not (a preparing slot's frames are not counted waiting)."""
        if slot.queue and not slot.preparing:
            self._waiting -= 1
        slot.queue.clear()

    # --- worker-thread calls ---------------------------------------------------------------
    async def run_in_worker(self, fn: tp.Callable[..., ResultT], *args: tp.Any) -> ResultT:
        """Runs fn on the model thread, in order with the ticks (model state is touched there only)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    def call_in_worker(self, fn: tp.Callable[..., tp.Any], *args: tp.Any) -> None:
        """Queues fn on the model thread, in order with the ticks, without waiting (e.g. a slot's new
        sampling settings). The future is kept until it is done; a failure is logged, never lost."""
        future = self.worker.submit(fn, *args)
        self._calls.add(future)
        future.add_done_callback(self._call_done)

    def _call_done(self, future: concurrent.futures.Future) -> None:
        self._calls.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("%s model-thread call failed", self.name, exc_info=future.exception())

    # --- the tick loop -----------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-scheduler")

    async def stop(self) -> None:
        for pending in self._between:
            if not pending.done.done():
                pending.done.cancel()
        self._between.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # the model thread may be mid-step: wait for it off the event loop, which other engines' sockets still need
        await asyncio.to_thread(self.worker.shutdown, wait=True, cancel_futures=True)

    def _due(self) -> float | None:
        """Seconds until the next tick is due: 0 = now, None = nothing to do."""
        if self._waiting == 0:
            return None
        if self._waiting >= self._active - self._preparing:
            return 0.0
        oldest = min(slot.queue[0].arrived for slot in self.slots if slot.queue and not slot.preparing)
        return max(0.0, oldest + self.policy.hold_s() - time.monotonic())

    async def _run(self) -> None:
        while True:
            due = self._due()
            if self._between:
                budget = self._between_budget(due)
                if budget is not None:
                    await self._run_between(budget)
                    continue
                if due is None or due > 0:
                    due = self._until_starved(due)
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
                await asyncio.sleep(0.01)  # back off so that a failure every tick does not spin

    @staticmethod
    def _live(entries: list[TickEntry[OwnerT]]) -> list[Delivery[OwnerT]]:
        """The entries whose frame ran and whose slot still has the owner that queued it."""
        return [Delivery(e.slot.owner, e.slot.index, e.frame) for e in entries
                if e.frame is not None and e.slot.owner is not None and e.slot.generation == e.generation]

    def _failed(self, entries: list[TickEntry[OwnerT]], error: Exception) -> None:
        """A step that raised lost its frames: each is counted as dropped in its slot (so its conversation's
        metrics and recording report it) and its owner is told."""
        self.failed_ticks += 1
        live = self._live(entries)
        for delivery in live:
            self.slots[delivery.index].dropped += 1
        self.runner.fail(live, error)

    def _until_starved(self, due: float | None) -> float:
        """How long to wait before looking again when between-tick work waits for room."""
        starved = self._between[0].since + self.between_starved_s - time.monotonic()
        return max(0.0, starved if due is None else min(due, starved))

    def _between_budget(self, due: float | None) -> float | None:
        """The time a piece of between-tick work may take now, or None: wait for the next tick first."""
        pending = self._between[0]
        starved = time.monotonic() - pending.since >= self.between_starved_s
        if self._active - self._preparing <= 0:
            return self.between_alone_s      # nobody is talking: nothing to keep on time
        if due is not None and due <= 0:     # a tick is due now; under overload that is always so
            return self.between_max_s if starved else None
        room = min(self.policy.hold_s() if due is None else due, self.between_max_s)
        if room >= pending.work.min_cost_s():
            return room
        # starved: a piece of the largest size, late ticks or not: the newcomer must progress
        return self.between_max_s if starved else None

    async def _run_between(self, budget_s: float) -> None:
        pending = self._between[0]
        self._running = pending
        try:
            finished = await self.run_in_worker(pending.work.run, budget_s)
        except Exception as exc:
            self._between.popleft()
            if not pending.done.done():
                pending.done.set_exception(exc)
            return
        finally:
            self._running = None
        self.between_runs += 1
        pending.since = time.monotonic()
        if pending.done.done():              # its waiter went away: drop it
            self._between.remove(pending)
        elif finished:
            self._between.popleft()
            pending.done.set_result(None)

    async def _tick(self) -> None:
        entries: list[TickEntry[OwnerT]] = []
        for slot in self.slots:
            if slot.preparing:
                continue
            frame = slot.queue.popleft() if (slot.owner is not None and slot.queue) else None
            if frame is not None and not slot.queue:
                self._waiting -= 1
            if frame is None and not slot.needs_reset:
                continue
            entries.append(TickEntry(slot, frame, slot.needs_reset, frame is not None and slot.first_frame,
                                     slot.generation))
            slot.needs_reset = False
            if frame is not None:
                slot.first_frame = False
        job = self.runner.prepare(entries)
        started = time.perf_counter()
        try:
            result = await self.run_in_worker(self.runner.execute, job)
        except Exception as exc:
            self._failed(entries, exc)
            raise
        self.last_step_ms = (time.perf_counter() - started) * 1000.0
        self.policy.observe_step(self.last_step_ms / 1000.0)
        self.ticks += 1
        self.runner.deliver(self._live(entries), result)
        if self.on_tick is not None:
            self.on_tick(self.last_step_ms, sum(e.frame is not None for e in entries))
