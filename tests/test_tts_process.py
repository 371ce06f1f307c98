"""The speech synthesiser in its own process (`TtsProcess`): turns produced there give the same audio and word
times as `TtsEngineModel` in this process, sample for sample (seeded), with text that streams in while it steps,
several turns at once and a cancel; a cut (`stop`) and a turn dropped without cancel behave as on a thread; a
child that dies fails the call that found it and a new child takes the next turns; a bad voice and a bad
checkpoint are clear errors. The server side (the default on CPU) is every cascade test over the protocol."""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

from duplex.models.spec import WEIGHTS_DIR, resolve_checkpoint
from duplex.models.tiny.tts import ensure_tiny_tts
from duplex.models.tts import TtsCapacity, TtsEngineModel, UnknownVoice
from duplex.models.tts_process import TtsProcess, TtsProcessError

SPEC = "tiny:tts"
SLOTS = 4
TEXT = "hello how are you today i am fine thank you"
OTHER = "let us speak about music books and friends"


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # both sides step with one thread: they round alike


@pytest.fixture(scope="module")
def here():
    ensure_tiny_tts(WEIGHTS_DIR / "tiny-tts")
    return TtsEngineModel(resolve_checkpoint(SPEC), SLOTS)


@pytest.fixture
def there():
    model = TtsProcess(SPEC, SLOTS, threads=1)
    yield model
    model.close()


def speak(model, texts: list[str], *, cancel_after: dict[int, int] | None = None):
    """Turns started together, their text streamed word by word between produce calls; each turn's frames
    (concatenated) and word times. `cancel_after[i]`: cancel turn i after that many of its frames."""
    turns = [model.start_turn(seed=i + 1) for i in range(len(texts))]
    words = [text.split() for text in texts]
    frames: list[list[np.ndarray]] = [[] for _ in texts]
    given = [0] * len(texts)
    for _ in range(2000):
        for i, turn in enumerate(turns):
            if given[i] < len(words[i]) and not turn.cancelled:
                turn.push_text(words[i][given[i]] + " ")
                given[i] += 1
                if given[i] == len(words[i]):
                    turn.end_text()
        live = [turn for turn in turns if not turn.done]
        if not live:
            break
        for turn, out in model.produce(live).items():
            i = turns.index(turn)
            frames[i] += [frame.pcm for frame in out]
            if cancel_after and i in cancel_after and len(frames[i]) >= cancel_after[i]:
                turn.cancel()
    assert all(turn.done for turn in turns)
    return [np.concatenate(f) if f else np.zeros(0, np.float32) for f in frames], \
        [turn.text_until(1e9) for turn in turns]


def test_turns_in_the_process_sound_as_on_a_thread(here, there):
    assert (there.available_voices(), there.default_voice, there.lookahead_words) == \
        (here.available_voices(), here.default_voice, here.lookahead_words)
    for texts, cancel in (([TEXT], None), ([TEXT, OTHER], {1: 6})):
        audio_here, words_here = speak(here, texts, cancel_after=cancel)
        audio_there, words_there = speak(there, texts, cancel_after=cancel)
        for a, b in zip(audio_here, audio_there, strict=True):
            np.testing.assert_array_equal(a, b)
        assert words_there == words_here
        assert words_here[0] == TEXT and len(audio_here[0]) > 0


def test_pacing_counts_and_the_word_taken_callback(there):
    turn = there.start_turn(seed=1)
    woken = []
    turn.on_words_taken = lambda: woken.append(turn.words_waiting)
    turn.push_text("one two three four five ")
    assert turn.has_words and turn.words_waiting == 5           # sent, not yet reported
    while not woken:
        there.produce([turn])
    assert turn.words_waiting < 5                                 # the child took some up
    turn.cancel()
    assert turn.done


def test_a_cut_call_returns_before_its_first_frame_and_resumes(there):
    turn = there.start_turn(seed=1)
    turn.push_text(TEXT + " ")
    turn.end_text()
    calls = 0
    while not there.produce([turn], frames_each=1, stop=lambda: True)[turn]:
        calls += 1
    assert calls > 5, "a stop that is always set cuts every call after one step"
    turn.cancel()


def test_capacity_and_a_dropped_turn_frees_its_slot(there):
    turns = [there.start_turn() for _ in range(SLOTS)]
    with pytest.raises(TtsCapacity):
        there.start_turn()
    del turns[0]
    gc.collect()
    late = there.start_turn(seed=3)        # the dropped turn's slot (freed in the child with this message)
    late.push_text(TEXT + " ")
    late.end_text()
    while not late.done:
        there.produce([late])
    assert late.text_until(1e9) == TEXT
    for turn in turns:
        turn.cancel()


def test_a_killed_process_fails_its_call_and_a_new_one_takes_the_next_turns(there, here):
    turn = there.start_turn(seed=1)
    turn.push_text(TEXT + " ")
    pid = there.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TtsProcessError, match="exited"):
        while True:
            there.produce([turn])
    assert turn.done                                          # its turn is over
    deadline = time.monotonic() + 120
    while True:                                               # restarting on its own thread: refused meanwhile
        try:
            again = speak(there, [TEXT])
            break
        except TtsCapacity:
            assert time.monotonic() < deadline, "no new TTS process within 120 s"
            time.sleep(0.2)
    np.testing.assert_array_equal(again[0][0], speak(here, [TEXT])[0][0])
    health = there.health()
    assert (health["process"], health["alive"], health["restarts"]) == (there.pid, True, 1) and there.pid != pid
    assert health["steps"] > 0                                # the new child's step counters


def test_a_bad_voice_and_a_bad_checkpoint_are_clear_errors(there, tmp_path):
    with pytest.raises(UnknownVoice, match="available"):
        there.start_turn(voice="nobody/none.wav")
    with pytest.raises(UnknownVoice, match="nobody"):
        TtsProcess(SPEC, 1, voice="nobody/none.wav", threads=1)
    with pytest.raises(TtsProcessError, match="missing"):
        TtsProcess(str(tmp_path / "missing"), 1, threads=1)
