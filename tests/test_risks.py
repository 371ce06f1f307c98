"""Issue 24 item 15: the prefix snapshot with no cache, /api/chat's handshake after a persona `restart`, and a
scheduler's stop that must not block the event loop. Real components: the tiny PersonaPlex, a real server."""

from __future__ import annotations

import asyncio
import sys
import threading

import aiohttp
import numpy as np
import pytest
import sphn
import torch

from duplex.engines.scheduler import BatchScheduler
from duplex.models.moshi_batch import MoshiBatch
from duplex.models.persona import build_prompt
from duplex.models.spec import resolve_checkpoint

from .conftest import start_server
from .test_scheduler import FakeRunner, Owner


def calls_of(name: str, module_end: str):
    """A profiler that counts the calls of the Python function `name` defined in a file ending `module_end`."""
    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == name and frame.f_code.co_filename.endswith(module_end):
            seen.append(frame.f_code.co_name)
    return seen, profile


def test_no_prefix_snapshot_is_taken_when_the_cache_keeps_nothing():
    """--prefix-cache-mb 0: every prefill copied the whole prompt's KV rows for a cache that threw them away."""
    torch.set_num_threads(1)
    model = MoshiBatch(resolve_checkpoint("tiny:personaplex"), 2, "cpu", torch.float32, prefix_cache_bytes=0)
    prompt = build_prompt(None, [11, 5, 40], "")
    seen, profile = calls_of("snapshot", "models/prefill.py")
    prefill = model.begin_prefill(0, prompt)
    sys.setprofile(profile)
    try:
        while not model.run_prefill(prefill, 1.0):
            pass
    finally:
        sys.setprofile(None)
    assert prefill.done and len(model.prefix_cache) == 0
    assert seen == []
    cached = MoshiBatch(resolve_checkpoint("tiny:personaplex"), 2, "cpu", torch.float32)   # with a cache: kept
    again = cached.begin_prefill(1, prompt)
    while not cached.run_prefill(again, 1.0):
        pass
    assert len(cached.prefix_cache) == 1


async def test_stop_leaves_the_event_loop_free_while_the_model_thread_finishes():
    """`stop()` waited for the model thread with `shutdown(wait=True)` on the event loop: every socket froze."""
    scheduler: BatchScheduler[Owner] = BatchScheduler(FakeRunner(), 2, name="test")
    await scheduler.start()
    busy = threading.Event()
    release = threading.Event()

    def long_model_call() -> None:
        busy.set()
        release.wait(60)
    scheduler.call_in_worker(long_model_call)
    await asyncio.get_running_loop().run_in_executor(None, busy.wait, 30)
    loop_answered = threading.Event()
    watchdog = threading.Thread(target=lambda: (loop_answered.wait(20), release.set()))   # a deadlock breaker
    watchdog.start()
    stopping = asyncio.create_task(scheduler.stop())
    for _ in range(10):
        await asyncio.sleep(0)     # stop() runs up to its wait for the model thread
    alive = not release.is_set()   # the loop got back here while the model call still ran
    loop_answered.set()
    await stopping
    watchdog.join()
    assert alive


def opus_pages(frames: int) -> list[bytes]:
    writer = sphn.OpusStreamWriter(24000)
    pages = [writer.append_pcm(np.zeros(1920, dtype=np.float32)) for _ in range(frames)]
    return [p for p in pages if len(p)]


@pytest.fixture(scope="module")
def persona_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("persona-risks"), "--preset", "tiny-personaplex", "--slots", "2",
                          "--no-cascade", "--opus-workers", "0")
    yield server
    server.stop()


async def test_an_api_chat_restart_with_a_persona_sends_no_second_handshake(persona_server):
    """The handshake (0x00) opens the conversation once; a `restart` puts the persona back in, and its
    readiness came out as a second 0x00, which Kyutai's and PersonaPlex's clients take for a new stream."""
    url = persona_server.http_url.replace("http://", "ws://") + "/api/chat?text_prompt=You%20sell%20boats"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert await ws.receive_bytes(timeout=60) == b"\x00"
        await ws.send_bytes(b"\x03\x03")   # control: restart (the persona goes in again)
        for page in opus_pages(12):
            await ws.send_bytes(b"\x01" + page)
        kinds: list[int] = []
        while kinds.count(1) < 3:   # answers to audio sent after the restart: the persona is back in by then
            kinds.append((await ws.receive_bytes(timeout=60))[0])
        assert 0 not in kinds, kinds


async def test_a_tick_runs_at_once_when_every_active_slot_has_a_frame_whatever_the_hold():
    """The tick policy's first rule (the mutant `tick-waits-although-every-slot-has-a-frame` survived the older
    test, whose 20 ms hold it could not tell from "at once"): with a one-minute hold, the tick still comes."""
    from .test_scheduler import frame, until

    runner = FakeRunner()
    sched: BatchScheduler[Owner] = BatchScheduler(runner, 2, max_wait_ms=60_000, name="test")
    await sched.start()
    try:
        a, b = Owner("a"), Owner("b")
        slot_a, slot_b = sched.acquire(a), sched.acquire(b)
        sched.push(slot_a, frame(1.0))
        sched.push(slot_b, frame(2.0))
        await until(lambda: a.got and b.got, timeout=30)   # far below the hold: only "at once" passes
        assert (a.got, b.got) == ([1.0], [2.0])
    finally:
        await sched.stop()


def test_persona_doc_says_what_the_prefill_queue_holds():
    """docs/persona.md said no frame is dropped while a persona goes in; the slot's queue holds --max-queue-frames
    (10 s) like any other, and past it drops the oldest, counted (scheduler.push)."""
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "persona.md").read_text().split())
    assert "none is dropped" not in text
    assert "--max-queue-frames" in text and "dropped oldest first" in text


async def test_a_preparing_slot_keeps_at_most_its_queue_bound_and_counts_the_rest():
    scheduler: BatchScheduler[Owner] = BatchScheduler(FakeRunner(), 2, max_queue_frames=3, name="test")
    slot = scheduler.acquire(Owner("a"))
    assert slot is not None
    slot.preparing = True
    kept = [scheduler.push(slot, np.full(1920, float(i), dtype=np.float32)) for i in range(5)]
    assert kept == [True, True, True, False, False] and slot.dropped == 2 and len(slot.queue) == 3
