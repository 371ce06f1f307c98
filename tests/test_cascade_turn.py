"""AssistantTurn in-process with fakes (no models, no server): how a turn ends, by itself or cut."""

from __future__ import annotations

import asyncio

import numpy as np

from duplex.engines.base import (AssistantAudio, AssistantText, AssistantTurnDone, AssistantTurnEnded,
                                 AssistantTurnStarted, LLMProcessing)
from duplex.engines.cascade_turn import AssistantTurn
from duplex.models.llm import ChatMessage, TokenUsage
from duplex.models.tts import TtsFrame


class FakeLLM:
    name = "fake"

    def __init__(self, deltas: list[str], hold: bool = False):
        self.deltas, self.hold = deltas, hold

    async def stream(self, messages, *, temperature, max_tokens, cancel, seed=None, tools=None, tool_choice=None,
                     usage=None, top_k=None):
        for delta in self.deltas:
            yield delta
        if self.hold:                    # a long answer still being written
            await asyncio.Event().wait()


class FakeTtsTurn:
    def __init__(self):
        self.text, self.ended, self.cancelled, self.finished = "", False, False, False

    def push_text(self, delta: str) -> None:
        self.text += delta

    def end_text(self) -> None:
        self.ended = True

    @property
    def done(self) -> bool:
        return self.cancelled or self.finished

    @property
    def has_words(self) -> bool:      # as TtsTurn: a word is whole once a space (or end_text) follows it
        words = self.text.split()
        return len(words) > 1 or (len(words) == 1 and (self.ended or self.text[-1].isspace()))

    def text_until(self, seconds: float) -> str:
        return " ".join(self.text.split()[: int(seconds / 0.08)])   # one word per frame

    def cancel(self) -> None:
        self.cancelled = True


class FakeEngine:
    max_tokens, ahead_frames, llm_words_ahead = 50, 3, 0   # 0: the LLM is read without pacing

    def __init__(self, llm: FakeLLM):
        self.llm, self.tts, self.wakes = llm, self, 0
        self.turn = FakeTtsTurn()

    def start_turn(self, voice, seed, top_k=None):
        return self.turn

    def wake(self) -> None:
        self.wakes += 1


def frames(n: int) -> list[TtsFrame]:
    return [TtsFrame(np.zeros(1920, dtype=np.float32), i) for i in range(n)]


def start(llm: FakeLLM) -> tuple[AssistantTurn, FakeEngine, list, list[ChatMessage]]:
    engine, out, history = FakeEngine(llm), [], [ChatMessage("user", "hi")]
    turn = AssistantTurn(engine, out.append, history, {"user_end": 0.0}, system_prompt="s", voice=None,
                         temperature=0.7, seed=None)
    return turn, engine, out, history


async def test_a_turn_that_ends_by_itself_keeps_the_whole_reply():
    turn, engine, out, history = start(FakeLLM(["hello ", "there ", "friend"]))
    await asyncio.sleep(0.01)                        # the LLM task has run
    assert engine.turn.ended and turn.wants_frames()
    turn.on_tts_frames(frames(3), turn.text_version)
    await asyncio.sleep(0.01)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 1)
    assert [type(f) for f in out] == [LLMProcessing, AssistantText, AssistantText, AssistantText,
                                      AssistantTurnStarted, AssistantAudio, AssistantAudio, AssistantAudio,
                                      AssistantTurnEnded, AssistantTurnDone]
    assert out[-1] == AssistantTurnDone(interrupted=False, usage=TokenUsage())   # (a fake LLM counts nothing)
    assert not out[-2].interrupted and list(out[-2].stages) == ["llm_first_token_ms", "tts_first_words_ms",
                                                                 "tts_first_frame_ms", "tts_first_audio_ms"]
    assert out[-2].playout == {"audio_gaps": 0, "audio_gap_ms": 0.0}   # all three frames were there in time
    assert history[-1] == ChatMessage("assistant", "hello there friend")
    assert turn.ended and not turn.wants_frames()


async def test_a_turn_counts_the_gaps_in_its_audio():
    """Frames that come after the client's audio ran out (sent 3 ahead of real time, 80 ms each) make a gap:
    counted, with how long the client had nothing, in the turn's `AssistantTurnEnded.playout`."""
    turn, engine, out, history = start(FakeLLM(["hello ", "there"]))
    await asyncio.sleep(0.01)
    turn.on_tts_frames(frames(2), turn.text_version)          # 160 ms of audio, sent at once
    await asyncio.sleep(0.4)                                   # the client ran out at 160 ms
    turn.on_tts_frames(frames(2), turn.text_version)
    await asyncio.sleep(0.01)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 2)
    ended = next(f for f in out if isinstance(f, AssistantTurnEnded))
    assert ended.playout is not None and ended.playout["audio_gaps"] == 1
    assert ended.playout["audio_gap_ms"] >= 200.0, ended.playout   # 400 ms waited - 160 ms of audio, at least


async def test_cancel_keeps_the_heard_words_and_awaits_both_tasks():
    turn, engine, out, history = start(FakeLLM(["one ", "two ", "three ", "four "], hold=True))
    await asyncio.sleep(0.01)
    turn.on_tts_frames(frames(2), turn.text_version)
    await asyncio.sleep(0.01)
    llm_task = turn._llm
    turn.cancel(barge_in=True)
    assert out[-2] == AssistantTurnEnded(interrupted=True, barge_in=True, stages=out[-2].stages, usage=TokenUsage(),
                                         playout={"audio_gaps": 0, "audio_gap_ms": 0.0})
    assert out[-1] == AssistantTurnDone(interrupted=True, usage=TokenUsage())
    assert history[-1] == ChatMessage("assistant", "one two")     # two frames played
    assert engine.turn.cancelled and not turn.pending
    await asyncio.gather(turn.task, return_exceptions=True)
    assert llm_task is not None and llm_task.done()
    sent = len(out)
    turn.on_tts_frames(frames(2), turn.text_version)                # a cut turn's last frames
    turn.cancel()                                                    # twice is harmless
    await asyncio.sleep(0.01)
    assert len(out) == sent


async def test_a_starved_turn_waits_for_new_text():
    turn, engine, out, history = start(FakeLLM(["one "], hold=True))
    await asyncio.sleep(0.01)
    turn.on_tts_frames([], turn.text_version)      # the TTS had nothing: not asked again...
    assert not turn.wants_frames()
    engine.turn.push_text("two ")
    turn._text_changed()                           # ...until more text arrives
    assert turn.wants_frames()
    turn.cancel()
    await asyncio.gather(turn.task, return_exceptions=True)
    assert history[-1].role == "user"              # nothing played, nothing kept
    assert out[-1] == AssistantTurnDone(interrupted=True, usage=TokenUsage())   # never spoke: no AssistantTurnEnded, still over
    assert AssistantTurnEnded not in [type(f) for f in out]


async def test_truncate_cuts_a_playing_turn_at_the_time_heard():
    turn, engine, out, history = start(FakeLLM(["one ", "two ", "three ", "four "], hold=True))
    await asyncio.sleep(0.01)
    turn.on_tts_frames(frames(3), turn.text_version)
    await asyncio.sleep(0.01)                        # three frames played: "one two three"
    turn.truncate(0.08)                              # but the client played only the first 80 ms
    assert history[-1] == ChatMessage("assistant", "one")
    assert out[-2] == AssistantTurnEnded(interrupted=True, barge_in=False, stages=out[-2].stages, usage=TokenUsage(),
                                         playout={"audio_gaps": 0, "audio_gap_ms": 0.0})
    assert out[-1] == AssistantTurnDone(interrupted=True, usage=TokenUsage())
    await asyncio.gather(turn.task, return_exceptions=True)


async def test_truncate_shortens_or_removes_a_finished_reply():
    turn, engine, out, history = start(FakeLLM(["hello ", "there ", "friend"]))
    await asyncio.sleep(0.01)
    turn.on_tts_frames(frames(3), turn.text_version)
    await asyncio.sleep(0.01)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 1)
    history.append(ChatMessage("user", "and?"))      # the conversation went on
    turn.truncate(0.16)
    assert history[1:] == [ChatMessage("assistant", "hello there"), ChatMessage("user", "and?")]
    turn.truncate(0.0)                               # nothing heard: the reply leaves the history
    assert history == [ChatMessage("user", "hi"), ChatMessage("user", "and?")]
    sent = len(out)
    turn.truncate(0.0)                               # again: nothing left to cut, nothing emitted
    assert len(out) == sent and len(history) == 2


async def test_the_pump_makes_first_frames_first_and_shares_speaking_steps():
    """`cascade.turns_to_step`: while a turn makes its first frame, speaking turns with frames in hand wait and
    one about to run out joins; a speaking step that runs takes along the speaking turns with room."""
    from duplex.engines.cascade import LOW_ON_AUDIO_FRAMES, RIDE_ALONG_FRAMES, turns_to_step

    turns = [start(FakeLLM(["one "], hold=True))[0] for _ in range(4)]
    await asyncio.sleep(0.01)                      # each holds its TTS turn
    starting, in_hand, low, full = turns
    for turn in (in_hand, low, full):
        turn.stages["tts_first_frame"] = 0.0       # these have spoken
    ahead = FakeEngine.ahead_frames

    def pending(turn: AssistantTurn, n: int) -> None:
        turn.pending.clear()
        turn.pending.extend(frames(n))

    pending(in_hand, LOW_ON_AUDIO_FRAMES + 1)      # wants frames (under ahead + 2), has some
    pending(low, LOW_ON_AUDIO_FRAMES)
    pending(full, ahead + 2)                       # wants none of its own, has room to ride along
    assert in_hand.wants_frames() and low.wants_frames() and not full.wants_frames()
    assert full.wants_frames(room=RIDE_ALONG_FRAMES)
    assert turns_to_step([starting, in_hand]) == [starting]              # the first frame alone
    assert turns_to_step([starting, in_hand, full]) == [starting]
    # one about to run out joins; its speaking step then takes the others along
    assert turns_to_step([starting, in_hand, low, full]) == [starting, low, in_hand, full]
    # nobody starting: every speaking turn that wants frames, and the ones with room ride along
    assert turns_to_step([in_hand, full]) == [in_hand, full]
    pending(full, ahead + 2 + RIDE_ALONG_FRAMES)
    assert turns_to_step([in_hand, full]) == [in_hand]
    starting.on_tts_frames([], starting.text_version)   # starved: waits for words, not chosen
    assert turns_to_step([starting, in_hand]) == [in_hand]
    for turn in turns:
        turn.cancel()
    await asyncio.gather(*(turn.task for turn in turns), return_exceptions=True)
    assert turns_to_step(turns) == []
