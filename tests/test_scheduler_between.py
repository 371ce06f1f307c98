"""Work between ticks (a persona prefill) and preparing slots, in process with the fake runner.

A preparing slot takes no part in ticks and loses none of its frames: they are delivered in order once
it is ready. Between-tick work runs in pieces sized to the room before the next tick (large when nobody
else is in a slot, at most `between_max_s` otherwise), and a piece runs anyway once the work has waited
`between_starved_s`, so that a busy batch cannot starve a newcomer.
"""

from __future__ import annotations

import threading

from duplex.engines.scheduler import BatchScheduler

from .test_scheduler import FakeRunner, Owner, frame, running_scheduler, until


class Work:
    """Finishes after `pieces` runs; records each run's budget; `min_cost` as told."""

    def __init__(self, pieces: int, min_cost: float = 0.0):
        self.pieces = pieces
        self.min_cost = min_cost
        self.budgets: list[float] = []
        self.threads: set[str] = set()

    def min_cost_s(self) -> float:
        return self.min_cost

    def run(self, budget_s: float) -> bool:
        self.budgets.append(budget_s)
        self.threads.add(threading.current_thread().name)
        return len(self.budgets) >= self.pieces


def balanced(sched: BatchScheduler[Owner]) -> bool:
    """The counters agree with the slots, and a free slot holds no frame (it would count as the oldest)."""
    owned = [s for s in sched.slots if s.owner is not None]
    return sched._waiting == sum(1 for s in owned if s.queue and not s.preparing) and \
        sched._preparing == sum(1 for s in owned if s.preparing) and \
        not any(s.queue for s in sched.slots if s.owner is None)


async def test_a_preparing_slot_keeps_its_frames_and_gets_them_all_after() -> None:
    async with running_scheduler() as (sched, runner):
        talker, newcomer = Owner("talker"), Owner("newcomer")
        a, b = sched.acquire(talker), sched.acquire(newcomer)
        assert a is not None and b is not None
        sched.begin_preparing(b)
        assert not b.needs_reset, "the work wipes the slot itself; a tick must not wipe it after"
        for k in range(3):
            sched.push(a, frame(k))
            sched.push(b, frame(10 + k))
        await until(lambda: len(talker.got) == 3)
        assert newcomer.got == [] and balanced(sched)
        assert all(index != b.index for tick in runner.ticks for index, *_ in tick)
        work = Work(pieces=3)
        await sched.run_between_ticks(work)
        assert len(work.budgets) == 3 and work.threads == {"test-model_0"}
        sched.end_preparing(b)
        await until(lambda: len(newcomer.got) == 3)
        assert newcomer.got == [10.0, 11.0, 12.0] and b.dropped == 0 and balanced(sched)


async def test_pieces_are_sized_to_the_room_before_the_next_tick() -> None:
    async with running_scheduler() as (sched, _):
        newcomer = Owner("newcomer")
        b = sched.acquire(newcomer)
        assert b is not None
        sched.begin_preparing(b)
        alone = Work(pieces=2)
        await sched.run_between_ticks(alone)
        assert alone.budgets == [sched.between_alone_s] * 2        # nobody else: big pieces
        talker = Owner("talker")
        assert sched.acquire(talker) is not None
        shared = Work(pieces=3)
        await sched.run_between_ticks(shared)
        assert all(0 < budget <= sched.between_max_s for budget in shared.budgets)


async def test_work_that_never_fits_runs_once_starved() -> None:
    async with running_scheduler() as (sched, _):
        talker, newcomer = Owner("talker"), Owner("newcomer")
        assert sched.acquire(talker) is not None
        b = sched.acquire(newcomer)
        assert b is not None
        sched.begin_preparing(b)
        sched.between_starved_s = 0.05
        work = Work(pieces=2, min_cost=10.0)                        # never fits the 30 ms hold
        await sched.run_between_ticks(work)
        assert work.budgets == [sched.between_max_s] * 2


async def test_releasing_a_preparing_slot_balances_the_books() -> None:
    runner = FakeRunner()
    sched: BatchScheduler[Owner] = BatchScheduler(runner, 2, max_wait_ms=30.0, name="test")
    slot = sched.acquire(Owner("x"))
    assert slot is not None
    sched.begin_preparing(slot)
    sched.push(slot, frame(1))
    sched.release(slot)
    assert not slot.preparing and balanced(sched) and sched._preparing == 0 and sched._waiting == 0
    assert not slot.queue and sched._due() is None, "a closed preparing slot left its frames behind"


async def test_a_reset_during_preparation_discards_the_frames_from_before_it() -> None:
    async with running_scheduler() as (sched, _):
        owner = Owner("x")
        slot = sched.acquire(owner)
        assert slot is not None
        sched.begin_preparing(slot)
        sched.push(slot, frame(1))
        sched.push(slot, frame(2))
        sched.reset(slot)                  # what DuplexStream.reset does first, before preparing anew
        sched.push(slot, frame(3))
        assert balanced(sched)
        sched.end_preparing(slot)
        await until(lambda: len(owner.got) == 1)
        assert owner.got == [3.0] and balanced(sched), "audio from before the reset went into the new conversation"
