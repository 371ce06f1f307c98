"""When a user turn's final transcript comes, counted in STT steps: the real tiny STT in its
`BatchScheduler`, driven by `UserTranscriber` as the cascade drives it (no socket, no timing).

- After a stall of the STT thread that overflowed its queue (frames dropped), the final transcript of
  every later turn still comes within two STT steps of the end-of-turn decision. It used to wait for the
  dropped frames too, which the STT never hears: a standing delay of one step per dropped frame.
- The flush: when the turn ends before the STT has heard its delay past the speech, the rest of the
  delay is fed as silence at once. The final text is the one the real-time path gives (greedy) and it
  comes with no further user frame, where the real-time path needs the user's next frames.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from duplex.audio import FRAME_SAMPLES, rms_dbfs
from duplex.engines.base import UserFrame, UserTranscript
from duplex.engines.scheduler import BatchScheduler
from duplex.engines.transcriber import SttRunner, UserTranscriber
from duplex.models import spec
from duplex.models.stt import SttBatch
from duplex.models.tiny.stt import ensure_tiny_stt

from .conftest import espeak

SLOTS = 4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stt():
    return SttBatch(spec.checkpoint_from_dir(ensure_tiny_stt(spec.WEIGHTS_DIR / "tiny-stt")), SLOTS)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stt-final")
    texts = ["Hello there, how are you?", "Tell me about the weather.", "One two three, let us go."]
    return [_frames(espeak(text, folder / f"{i}.wav")) for i, text in enumerate(texts)]


def _frames(pcm: np.ndarray) -> list[np.ndarray]:
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % FRAME_SAMPLES, dtype=np.float32)])
    return list(pcm.reshape(-1, FRAME_SAMPLES))


def _user_frame(pcm: np.ndarray) -> UserFrame:
    return UserFrame(pcm, rms_dbfs(pcm))


class Conversation:
    """One user side, with the STT step count at its end-of-turn decision and at its final transcript."""

    def __init__(self, scheduler: BatchScheduler, silence_ms: float, flush: bool, flush_frames: int):
        self.scheduler = scheduler
        self.finals: list[tuple[str, int]] = []      # (text, scheduler.ticks when it came)
        self.decisions: list[int] = []               # scheduler.ticks when the turn end was decided
        self.user = UserTranscriber(scheduler, self._sink, {"silence_ms": silence_ms, "pause": None},
                                    flush_frames, flush=flush)

    def _sink(self, frame: object) -> None:
        if isinstance(frame, UserTranscript) and frame.end_ms is not None:
            self.finals.append((frame.content, self.scheduler.ticks))

    def push(self, pcm: np.ndarray) -> None:
        in_turn = self.user.detector.in_turn
        self.user.push(_user_frame(pcm))
        if in_turn and not self.user.detector.in_turn:
            self.decisions.append(self.scheduler.ticks)


async def settle(scheduler: BatchScheduler) -> None:
    """Until every queued frame is stepped and delivered: barriers on the model thread (each behind any
    step in flight), until two in a row saw no tick and an empty queue (a frame popped just after the
    first barrier was submitted is stepped before the second)."""
    quiet = 0
    while quiet < 2:
        ticks = scheduler.ticks
        await scheduler.run_in_worker(lambda: None)
        for _ in range(3):
            await asyncio.sleep(0)
        idle = ticks == scheduler.ticks and not any(slot.queue for slot in scheduler.slots)
        quiet = quiet + 1 if idle else 0


async def speak_until_decided(conversations: list[Conversation], speech: list[list[np.ndarray]]) -> None:
    """Each conversation says its utterance, then silence until its turn end is decided, a frame each per
    round, the STT keeping up (as with real-time clients); nothing is pushed after a conversation's decision."""
    silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
    streams = [iter(frames) for frames in speech]
    decided = [len(c.decisions) for c in conversations]
    while any(len(c.decisions) == d for c, d in zip(conversations, decided)):
        for c, stream, d in zip(conversations, streams, decided):
            if len(c.decisions) == d:
                c.push(next(stream, silence))
        if any(len(c.decisions) == d for c, d in zip(conversations, decided)):
            await settle(conversations[0].scheduler)


@pytest.mark.parametrize("n", [1, 3])
async def test_final_within_two_steps_after_the_queue_overflowed(stt, utterances, n):
    scheduler = BatchScheduler(SttRunner(stt), SLOTS, max_queue_frames=8, name="stt")
    await scheduler.start()
    conversations = [Conversation(scheduler, 640.0, True, stt.flush_frames) for _ in range(n)]
    try:
        # The STT thread stalls (as a torch.compile started mid-step once made it) while the users talk on.
        gate = threading.Event()
        scheduler.call_in_worker(gate.wait, 30)
        silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        for _ in range(20):
            for c in conversations:
                c.push(silence)
        gate.set()
        await settle(scheduler)
        assert all(c.user.frames_dropped == 12 for c in conversations)
        assert [c.user.stt_frames for c in conversations] == [8] * n   # the STT heard what was kept
        for turn in range(2):
            await speak_until_decided(conversations, [utterances[(i + turn) % 3] for i in range(n)])
            await settle(scheduler)
            for c in conversations:
                assert len(c.finals) == turn + 1, "no final transcript: it waits for frames the STT never got"
                steps = c.finals[-1][1] - c.decisions[-1]
                assert steps <= 2, f"final transcript {steps} STT steps after the decision"
    finally:
        for c in conversations:
            c.user.close()
        await scheduler.stop()


async def test_flush_gives_the_real_time_text_without_waiting(stt, utterances):
    """A 240 ms silence rule decides the turn 3 frames after the speech, before the STT (0.5 s delay:
    7 steps) has heard it all: the flush feeds the other 4 frames at once."""
    scheduler = BatchScheduler(SttRunner(stt), SLOTS, name="stt")
    await scheduler.start()
    try:
        results = {}
        for flush in (False, True):
            c = Conversation(scheduler, 240.0, flush, stt.flush_frames)
            await speak_until_decided([c], [utterances[0]])
            await settle(scheduler)
            extra = 0
            while not c.finals:            # the real-time path: the user's next (silent) frames bring it
                c.push(np.zeros(FRAME_SAMPLES, dtype=np.float32))
                extra += 1
                await settle(scheduler)
            results[flush] = (c.finals[0][0], extra, c.finals[0][1] - c.decisions[0], c.user.flushed_frames)
            c.user.close()
        (text_rt, extra_rt, _, flushed_rt), (text_fl, extra_fl, steps_fl, flushed_fl) = results[False], results[True]
        missing = stt.flush_frames - 3
        assert (extra_rt, flushed_rt) == (missing, 0)
        assert (extra_fl, flushed_fl) == (0, missing)
        assert steps_fl <= missing + 2       # the decision frame, the flush, one tick in flight
        assert text_fl == text_rt and text_fl
    finally:
        await scheduler.stop()
