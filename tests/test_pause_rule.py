"""The semantic end of turn (`turns.PauseRule`) with scripted pause probabilities, in process, counted in frames.

Random-weight STTs cannot give a meaningful pause probability, so these tests inject one: straight into
`EndOfTurnDetector`, and through a real `BatchScheduler` + `UserTranscriber` whose runner plays a scripted
stream of (text, pause probability) per STT step in place of the model. Which rule a server runs
(`loading.end_of_turn_rule`) is checked on its own; a server's /health shows it (test_cascade.py).
"""

from __future__ import annotations

import asyncio
import math
import types

import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES
from duplex.engines.base import UserFrame, UserTranscript
from duplex.engines.cascade import CascadeStream
from duplex.engines.scheduler import BatchScheduler, Delivery, TickEntry
from duplex.engines.transcriber import SttSlotOwner, UserTranscriber
from duplex.engines.turns import EndOfTurnDetector, PauseRule
from duplex.server.loading import StartupError, end_of_turn_rule
from duplex.server.options import ServeOptions

LOUD, QUIET = -20.0, -90.0
RULE = PauseRule()   # ema 0.5, end 0.6, barge-in 0.4, min pause 160 ms (2 frames), grace 3000 ms (38 frames)


def feed(detector: EndOfTurnDetector, levels: list[float], probs: list[float],
         speaking: list[bool] | None = None) -> list[tuple[int, str]]:
    """(frame index, event kind) for each event, one frame per level with the STT's probability for it."""
    events = []
    for k, (level, prob) in enumerate(zip(levels, probs, strict=True)):
        event = detector.update(level, prob, assistant_speaking=bool(speaking and speaking[k]))
        if event is not None:
            events.append((k, event.kind))
    return events


def speech_then_quiet(loud: int, quiet: int) -> list[float]:
    return [LOUD] * loud + [QUIET] * quiet


# --- the detector --------------------------------------------------------------------------------
def test_a_confident_pause_ends_the_turn_after_min_pause_of_quiet_not_before() -> None:
    levels = speech_then_quiet(10, 12)
    confident = feed(EndOfTurnDetector(pause=RULE), levels, [0.1] * 10 + [0.95] * 12)
    # speech starts at frame 1 (160 ms of loud), quiet from frame 10: 2 quiet frames, and the average is there
    assert confident == [(1, "speech_start"), (11, "turn_end")]
    energy = feed(EndOfTurnDetector(pause=None), levels, [0.1] * 10 + [0.95] * 12)
    assert energy == [(1, "speech_start"), (17, "turn_end")], "without the rule, 640 ms (8 frames) of quiet"


def test_the_average_must_reach_the_threshold_a_single_spike_does_not_end_the_turn() -> None:
    levels = speech_then_quiet(10, 12)
    # low while speaking, then one spike of 0.9 in the quiet and back to 0.2: averages 0.55 at most
    probs = [0.2] * 10 + [0.2, 0.9, 0.2] + [0.2] * 9
    assert feed(EndOfTurnDetector(pause=RULE), levels, probs)[-1] == (17, "turn_end"), "the energy rule's end"
    unsmoothed = PauseRule(ema=1.0)
    assert feed(EndOfTurnDetector(pause=unsmoothed), levels, probs)[-1] == (11, "turn_end"), "the spike, unsmoothed"


def test_the_average_rises_step_by_step() -> None:
    levels = speech_then_quiet(10, 12)
    probs = [0.0] * 10 + [1.0] * 12    # average after the quiet begins: 0.5, 0.75, ...
    assert feed(EndOfTurnDetector(pause=RULE), levels, probs)[-1] == (11, "turn_end")
    slow = PauseRule(ema=0.2)          # 0.2, 0.36, 0.49, 0.59, 0.67: at the fifth quiet frame
    assert feed(EndOfTurnDetector(pause=slow), levels, probs)[-1] == (14, "turn_end")


def test_nan_probabilities_are_no_news() -> None:
    detector = EndOfTurnDetector(pause=RULE)
    feed(detector, [QUIET] * 3, [0.9, math.nan, math.nan])
    assert detector.pause_avg == 0.9


def test_a_pause_head_that_never_calls_the_end_leaves_it_to_the_silence() -> None:
    levels = speech_then_quiet(10, 12)
    assert feed(EndOfTurnDetector(pause=RULE), levels, [0.1] * 22)[-1] == (17, "turn_end")


def speaking_frames(n: int) -> list[bool]:
    return [True] * n


def test_barge_in_when_the_average_falls_while_the_assistant_speaks_after_the_grace() -> None:
    grace = round(RULE.grace_ms / 80)                 # 38 frames
    n = grace + 10
    detector = EndOfTurnDetector(pause=RULE)
    # the user is quiet and sure of the pause until frame grace + 3, then speaks: the average falls
    probs = [0.9] * (grace + 3) + [0.0] * 7
    levels = [QUIET] * (grace + 3) + [LOUD] * 7
    events = feed(detector, levels, probs, speaking_frames(n))
    # 0.45 after one low step, 0.225 after two (below 0.4), the frame the user's speech starts (that frame's event),
    # so the barge-in comes at the next: once, not repeated
    assert events == [(grace + 4, "speech_start"), (grace + 5, "barge_in")]


def test_no_barge_in_by_the_pause_head_during_the_grace_or_while_the_assistant_is_silent() -> None:
    grace = round(RULE.grace_ms / 80)
    detector = EndOfTurnDetector(pause=RULE)
    probs = [0.0] * grace                            # the assistant's own voice in the microphone, say
    assert "barge_in" not in [kind for _, kind in feed(detector, [QUIET] * grace, probs, speaking_frames(grace))]
    quiet_assistant = EndOfTurnDetector(pause=RULE)
    assert feed(quiet_assistant, [QUIET] * 60, [0.0] * 60) == []
    # the grace starts again with each assistant speech
    again = EndOfTurnDetector(pause=RULE)
    speaking = [True] * 30 + [False] * 2 + [True] * 30
    assert "barge_in" not in [kind for _, kind in feed(again, [QUIET] * 62, [0.0] * 62, speaking)]


def test_the_energy_rule_never_calls_a_barge_in() -> None:
    detector = EndOfTurnDetector(pause=None)
    assert "barge_in" not in [kind for _, kind in feed(detector, [QUIET] * 60, [0.0] * 60, speaking_frames(60))]


# --- through the transcriber and a real scheduler ---------------------------------------------
class ScriptedStt:
    """A TickRunner in place of SttRunner: step k of a slot answers script[k] = (text, pause probability)."""

    def __init__(self, script: list[tuple[str | None, float]]):
        self.script = script
        self.steps = 0

    def prepare(self, entries: list[TickEntry[SttSlotOwner]]) -> list[TickEntry[SttSlotOwner]]:
        return entries

    def execute(self, entries: list[TickEntry[SttSlotOwner]]) -> list[tuple[str | None, float]]:
        out = []
        for entry in entries:
            if entry.frame is not None:
                out.append(self.script[min(self.steps, len(self.script) - 1)])
                self.steps += 1
        return out

    def deliver(self, deliveries: list[Delivery[SttSlotOwner]], result: list[tuple[str | None, float]]) -> None:
        for d, (text, pause) in zip(deliveries, result, strict=True):
            d.owner.on_stt(text, pause)

    def fail(self, deliveries: list[Delivery[SttSlotOwner]], error: Exception) -> None:
        raise AssertionError(f"the scripted STT never fails: {error}")


def frame(level: float) -> UserFrame:
    return UserFrame(np.zeros(FRAME_SAMPLES, dtype=np.float32), level)


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


async def test_the_transcriber_ends_the_turn_on_the_scripted_pause_and_calls_the_barge_in() -> None:
    # 10 frames of speech with a word in them, then a confident pause
    script: list[tuple[str | None, float]] = [(None, 0.1)] * 4 + [("\u2581hello", 0.1)] + [(None, 0.1)] * 5
    script += [(None, 0.95)] * 20
    runner = ScriptedStt(script)
    scheduler: BatchScheduler[SttSlotOwner] = BatchScheduler(runner, 2, max_wait_ms=0.0, name="stt-test")
    await scheduler.start()
    out: list[object] = []
    turns: list[tuple[str, int]] = []
    barge_ins: list[int] = []
    speaking = [False]
    user = UserTranscriber(scheduler, out.append, {"pause": RULE}, flush_frames=7,
                           on_turn=lambda text: turns.append((text, user.frames_pushed)),
                           on_barge_in=lambda: barge_ins.append(user.frames_pushed),
                           assistant_speaking=lambda: speaking[0])
    try:
        for k in range(14):
            user.push(frame(LOUD if k < 10 else QUIET))
            await until(lambda: user.stt_frames == user.frames_queued, "the STT step")   # flush included
            if turns:
                break
        # the STT steps a frame after it is pushed: the average passes 0.6 with the second quiet frame's step,
        # and the detector sees it at the third quiet frame (not 8, the energy rule's)
        assert turns == [("hello", 13)]
        final = [f for f in out if isinstance(f, UserTranscript) and f.end_ms is not None]
        assert [(f.content, f.end_ms) for f in final] == [("hello", 800)]
        assert user.flushed_frames == 4, "the STT's delay (7 frames) less the 3 quiet frames it was sent"
        # the assistant speaks; the scripted pause stays high 38 steps, then falls (the user talks over it)
        runner.script, runner.steps = [(None, 0.9)] * 38 + [(None, 0.0)] * 10, 0
        speaking[0] = True
        for _ in range(48):
            user.push(frame(QUIET))
            await until(lambda: user.stt_frames == user.frames_queued, "the STT step")
            if barge_ins:
                break
        # the average falls below 0.4 with the 40th step (0.45, then 0.225), seen at the 41st frame
        assert barge_ins == [13 + 41]
    finally:
        user.close()
        await scheduler.stop()


# --- the cascade stream: who cuts the assistant under the pause rule -------------------------------
class FakeTurn:
    def __init__(self, speaking: bool):
        self.speaking, self.ended, self.cuts = speaking, False, []

    def cancel(self, barge_in: bool = False) -> None:
        self.ended = True
        self.cuts.append(barge_in)


@pytest.mark.parametrize("pause", [RULE, None])
def test_speech_over_the_speaking_assistant_is_the_pause_heads_call(pause: PauseRule | None) -> None:
    stream = CascadeStream(types.SimpleNamespace(pause=pause), lambda frame: None)   # type: ignore[arg-type]
    stream.turn = speaking = FakeTurn(speaking=True)   # type: ignore[assignment]
    stream.on_user_speech()
    assert speaking.cuts == ([] if pause else [True]), "energy alone cuts only under the energy rule"
    stream.on_barge_in()
    assert speaking.cuts == [True]
    stream.turn = thinking = FakeTurn(speaking=False)   # type: ignore[assignment]
    stream.on_user_speech()
    assert thinking.cuts == [True], "a turn still thinking is cut by speech under either rule"


# --- which rule a server runs --------------------------------------------------------------------
def test_which_rule_is_live() -> None:
    auto = ServeOptions()
    rule, why = end_of_turn_rule(auto, "kyutai/stt-1b-en_fr", True)
    assert rule == PauseRule() and "pause head" in why
    assert end_of_turn_rule(auto, "tiny:stt", True)[0] is None, "random weights: energy"
    assert "random weights" in end_of_turn_rule(auto, "tiny:stt", True)[1]
    assert end_of_turn_rule(auto, "kyutai/stt-1b-en_fr", False) == (None, "the STT kyutai/stt-1b-en_fr has no pause head")
    forced = ServeOptions(end_of_turn_rule="pause", pause_ema=0.3, pause_end_threshold=0.7,
                          pause_barge_in_threshold=0.2, min_pause_ms=240.0, barge_in_grace_ms=1000.0)
    assert end_of_turn_rule(forced, "tiny:stt", True)[0] == PauseRule(0.3, 0.7, 0.2, 240.0, 1000.0)
    assert end_of_turn_rule(ServeOptions(end_of_turn_rule="energy"), "kyutai/stt-1b-en_fr", True)[0] is None
    with pytest.raises(StartupError, match="no pause head"):
        end_of_turn_rule(forced, "kyutai/stt-1b-en_fr", False)
    with pytest.raises(StartupError, match="pause-end-threshold"):
        end_of_turn_rule(ServeOptions(pause_end_threshold=1.5), "tiny:stt", True)
    with pytest.raises(StartupError, match="pause-ema"):
        end_of_turn_rule(ServeOptions(pause_ema=0.0), "tiny:stt", True)
