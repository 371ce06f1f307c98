"""BatchScheduler in process, with a fake model runner: ticks, masks, queues, stale results, model-thread calls.

No model and no socket: each test runs in milliseconds (pipecat's `run_test` shape: frames in, what the
runner saw and what the owners got out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import typing as tp
from dataclasses import dataclass, field

import numpy as np
import pytest

from duplex.engines.scheduler import BatchScheduler, Delivery, TickEntry, TickPolicy


@dataclass
class Owner:
    name: str
    got: list[float] = field(default_factory=list)   # the first sample of each frame delivered back
    lost: list[str] = field(default_factory=list)    # the errors of failed steps that had its frame

    def on_result(self, value: float) -> None:
        self.got.append(value)


class FakeRunner:
    """Echoes each slot's frame back; records what every tick prepared. `gate` can hold a step."""

    def __init__(self) -> None:
        self.ticks: list[list[tuple[int, float | None, bool, bool]]] = []   # (slot, sample, reset, first)
        self.gate = threading.Event()
        self.gate.set()
        self.step_started = threading.Event()
        self.fail_on: set[float] = set()      # a step with a frame of one of these values raises

    def prepare(self, entries: list[TickEntry[Owner]]) -> dict[int, float]:
        self.ticks.append([(e.slot.index, None if e.frame is None else float(e.frame.pcm[0]), e.reset, e.first)
                           for e in entries])
        return {e.slot.index: float(e.frame.pcm[0]) for e in entries if e.frame is not None}

    def execute(self, job: dict[int, float]) -> dict[int, float]:
        self.step_started.set()
        self.gate.wait(5)
        if self.fail_on & set(job.values()):
            raise RuntimeError("model step failed")
        return job

    def deliver(self, deliveries: list[Delivery[Owner]], result: dict[int, float]) -> None:
        for d in deliveries:
            d.owner.on_result(result[d.index])

    def fail(self, deliveries: list[Delivery[Owner]], error: Exception) -> None:
        for d in deliveries:
            d.owner.lost.append(str(error))


def frame(value: float) -> np.ndarray:
    return np.full(4, value, dtype=np.float32)


def books_balance(sched: BatchScheduler[Owner]) -> bool:
    """The scheduler's counters (which decide when its loop wakes) agree with its slots."""
    owned = [slot for slot in sched.slots if slot.owner is not None]
    return sched.active == len(owned) and sched._waiting == sum(1 for slot in owned if slot.queue)


async def until(predicate, timeout: float = 2.0) -> None:
    """Waits for the scheduler's loop to catch up (it runs on this loop and a worker thread)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def running_scheduler() -> tp.AsyncIterator[tuple[BatchScheduler[Owner], FakeRunner]]:
    """A started scheduler of 3 slots on the test's own loop (a fixture would live on another loop)."""
    runner = FakeRunner()
    sched: BatchScheduler[Owner] = BatchScheduler(runner, 3, max_wait_ms=30.0, max_queue_frames=4, name="test")
    await sched.start()
    try:
        yield sched, runner
        assert books_balance(sched)
    finally:
        runner.gate.set()
        await sched.stop()


async def test_a_tick_runs_once_every_active_slot_has_a_frame() -> None:
    async with running_scheduler() as (sched, runner):
        a, b = Owner("a"), Owner("b")
        slot_a, slot_b = sched.acquire(a), sched.acquire(b)
        sched.push(slot_a, frame(1.0))
        await asyncio.sleep(0.005)
        assert runner.ticks == [], "b has no frame yet and the wait bound has not passed"
        sched.push(slot_b, frame(2.0))
        await until(lambda: a.got and b.got)
        # the free slot 2 rides along once, to be wiped; it has no frame, so it is masked out
        assert runner.ticks == [[(0, 1.0, True, True), (1, 2.0, True, True), (2, None, True, False)]]
        assert (a.got, b.got) == ([1.0], [2.0])


async def test_a_failed_step_counts_its_frames_as_dropped_tells_their_owners_and_ticking_goes_on() -> None:
    async with running_scheduler() as (sched, runner):
        runner.fail_on = {2.0}
        a, b = Owner("a"), Owner("b")
        slot_a, slot_b = sched.acquire(a), sched.acquire(b)
        for value in (1.0, 2.0, 3.0):
            sched.push(slot_a, frame(value))
            sched.push(slot_b, frame(value + 10))
            await until(lambda value=value: len(a.got) + len(a.lost) == value)
        assert (a.got, b.got) == ([1.0, 3.0], [11.0, 13.0])      # the failed step's frames never came back
        assert a.lost == b.lost == ["model step failed"]
        assert (slot_a.dropped, slot_b.dropped, sched.failed_ticks) == (1, 1, 1)


async def test_a_silent_slot_never_holds_the_others_back() -> None:
    async with running_scheduler() as (sched, runner):
        a, silent = Owner("a"), Owner("silent")
        slot_a = sched.acquire(a)
        sched.acquire(silent)
        for k in range(3):
            sched.push(slot_a, frame(float(k)))
            await until(lambda k=k: len(a.got) == k + 1)
        assert a.got == [0.0, 1.0, 2.0] and silent.got == []
        # the silent slot is masked out: only its reset rides the first tick, never a frame
        assert [[entry[0] for entry in tick if entry[1] is not None] for tick in runner.ticks] == [[0], [0], [0]]


async def test_frames_come_back_in_order_one_answer_each_and_first_is_flagged_once() -> None:
    async with running_scheduler() as (sched, runner):
        a = Owner("a")
        slot = sched.acquire(a)
        for k in range(4):
            sched.push(slot, frame(float(k)))
        await until(lambda: len(a.got) == 4)
        assert a.got == [0.0, 1.0, 2.0, 3.0]
        firsts = [entry[3] for tick in runner.ticks for entry in tick if entry[1] is not None]
        assert firsts == [True, False, False, False]


async def test_a_full_queue_drops_the_oldest_frame_and_counts_it() -> None:
    async with running_scheduler() as (sched, runner):
        a = Owner("a")
        slot = sched.acquire(a)
        runner.gate.clear()                       # hold the model so the queue fills up
        sched.push(slot, frame(0.0))
        await until(runner.step_started.is_set)   # frame 0 is being stepped
        kept = [sched.push(slot, frame(float(k))) for k in range(1, 7)]   # 6 frames into a queue of 4
        assert kept == [True, True, True, True, False, False] and slot.dropped == 2
        runner.gate.set()
        await until(lambda: len(a.got) == 5)
        assert a.got == [0.0, 3.0, 4.0, 5.0, 6.0]


async def test_a_slot_released_mid_step_gets_nothing_and_its_next_owner_starts_clean() -> None:
    async with running_scheduler() as (sched, runner):
        old = Owner("old")
        slot = sched.acquire(old)
        runner.gate.clear()
        sched.push(slot, frame(1.0))
        await until(runner.step_started.is_set)
        sched.release(slot)                       # the conversation leaves while its frame is in the model
        new = Owner("new")
        assert sched.acquire(new) is slot
        runner.gate.set()
        await until(lambda: len(runner.ticks) == 1)
        await asyncio.sleep(0.01)
        assert old.got == [] and new.got == [], "a stale result must not reach anyone"
        sched.push(slot, frame(2.0))
        await until(lambda: new.got == [2.0])
        assert runner.ticks[-1] == [(0, 2.0, True, True)], "the reused slot is reset, and its frame is a first"


async def test_reset_discards_queued_frames_and_wipes_the_slot_at_the_next_tick() -> None:
    async with running_scheduler() as (sched, runner):
        a = Owner("a")
        slot = sched.acquire(a)
        sched.push(slot, frame(1.0))
        await until(lambda: a.got == [1.0])
        runner.gate.clear()
        sched.push(slot, frame(2.0))
        await until(lambda: len(runner.ticks) == 2)
        sched.push(slot, frame(3.0))              # queued behind the held step
        sched.reset(slot)
        runner.gate.set()
        sched.push(slot, frame(4.0))
        await until(lambda: 4.0 in a.got)
        assert a.got == [1.0, 4.0], "the frame queued before the reset is gone, and so is the one in the model"
        assert runner.ticks[-1] == [(0, 4.0, True, True)]


async def test_a_result_in_flight_at_a_reset_is_not_delivered_into_the_new_stream() -> None:
    """A reset starts a new stream in the same slot: the old stream's frame, mid-step when the reset came,
    must not be answered into it (a transcriber would count one frame too many, and hear the old audio)."""
    async with running_scheduler() as (sched, runner):
        a = Owner("a")
        slot = sched.acquire(a)
        runner.gate.clear()
        sched.push(slot, frame(1.0))
        await until(runner.step_started.is_set)   # frame 1 is in the model
        sched.reset(slot)
        runner.gate.set()
        await until(lambda: len(runner.ticks) == 1)
        sched.push(slot, frame(2.0))
        await until(lambda: len(runner.ticks) == 2 and a.got)
        assert a.got == [2.0], "only the new stream's frame is answered"
        assert runner.ticks[-1] == [(0, 2.0, True, True)], "the slot is wiped and its next frame is a first"


async def test_a_failing_model_thread_call_is_logged_not_lost(caplog) -> None:
    async with running_scheduler() as (sched, _runner):
        done = threading.Event()

        def broken() -> None:
            done.set()
            raise RuntimeError("bad settings")

        with caplog.at_level(logging.ERROR, logger="duplex.engines.scheduler"):
            sched.call_in_worker(broken)
            await until(lambda: done.is_set() and not sched._calls)
        assert any("model-thread call failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_capacity() -> None:
    async with running_scheduler() as (sched, _runner):
        owners = [Owner(str(i)) for i in range(3)]
        slots = [sched.acquire(o) for o in owners]
        assert sched.active == 3 and not sched.has_free_slot() and sched.acquire(Owner("late")) is None
        sched.release(slots[1])
        assert sched.active == 2 and sched.has_free_slot()


def test_the_hold_is_what_an_answer_within_one_frame_can_afford() -> None:
    policy = TickPolicy()
    assert policy.hold_s() == pytest.approx(0.020)                  # nothing timed yet
    policy.observe_step(0.010)
    assert policy.hold_s() == pytest.approx(0.080 - 0.010 - 0.005)  # answer within 80 ms: wait 65 ms at most
    for _ in range(60):
        policy.observe_step(0.060)                                   # steps past half a frame
    assert policy.step_s == pytest.approx(0.060, abs=1e-4)
    assert policy.hold_s() == pytest.approx(0.015, abs=1e-4)        # the answer's budget shrinks with the step
    for _ in range(60):
        policy.observe_step(0.090)
    assert policy.hold_s() == 0.0                                    # past the budget: as soon as the model is free
    assert TickPolicy(max_wait_ms=30.0).hold_s() == pytest.approx(0.030)


async def test_frames_of_unaligned_clients_share_a_tick_while_their_answer_can_wait() -> None:
    runner = FakeRunner()
    sched: BatchScheduler[Owner] = BatchScheduler(runner, 3, name="test")     # the automatic hold
    sched.policy.observe_step(0.010)                                          # a 10 ms step: hold 65 ms
    await sched.start()
    try:
        a, b = Owner("a"), Owner("b")
        slot_a, slot_b = sched.acquire(a), sched.acquire(b)
        sched.push(slot_a, frame(1.0))
        await asyncio.sleep(0.03)              # b's frame comes 30 ms later: a's can still wait for it
        assert runner.ticks == []
        sched.push(slot_b, frame(2.0))
        await until(lambda: a.got and b.got)
        assert [[entry[:2] for entry in tick if entry[1] is not None] for tick in runner.ticks] == [[(0, 1.0), (1, 2.0)]]
    finally:
        await sched.stop()
