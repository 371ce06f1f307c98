"""The TTS's first frame (issue 22): a starting turn's delay steps run back to back, on its rows only, with
only the codebooks that have started, and begin before the LLM has written the lookahead words; and
none of it changes a number of the turn's audio. Counted in model steps, never in milliseconds.

Real moshi TTS classes and Mimi, tiny random weights. The "full" engine computes every slot's row at each
step and every codebook once the audio starts (`lean_steps=False`), with all of the text given before
the first step: the path without any of the shortcuts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duplex.models.spec import WEIGHTS_DIR, checkpoint_from_dir
from duplex.models.tiny.tts import TINY_VOICES, ensure_tiny_tts
from duplex.models.tts import TtsEngineModel
from duplex.models.tts_rows import MIN_ROWS

TEXT = "hello how are you today i am fine thank you what would you like to talk about"
OTHER = "let us speak about music books science travel food and friends and more"
SLOTS = 16


@pytest.fixture(scope="module")
def checkpoint():
    return checkpoint_from_dir(ensure_tiny_tts(WEIGHTS_DIR / "tiny-tts"))


@pytest.fixture(scope="module")
def engines(checkpoint):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one intra-op thread, as the server's model threads on a small CPU
    lean = TtsEngineModel(checkpoint, slots=SLOTS, lean_steps=True)
    full = TtsEngineModel(checkpoint, slots=SLOTS, lean_steps=False)
    yield lean, full
    torch.set_num_threads(threads)


def said_whole(engine: TtsEngineModel, text: str, seed: int, voice: str | None = None):
    """The turn on the path without shortcuts: all of its text first, then stepped alone to the end."""
    turn = engine.start_turn(voice=voice, seed=seed)
    turn.push_text(text)
    turn.end_text()
    frames = []
    while not turn.done:
        frame = turn.step()
        if frame is not None:
            frames.append(frame)
    return np.concatenate([f.pcm for f in frames]), list(turn.gen.machine.transcript)


def finish(engine: TtsEngineModel, turns: list, out: dict) -> None:
    for turn in turns:
        turn.end_text()
    while not all(turn.done for turn in turns):
        for turn, frames in engine.produce(turns).items():
            out[turn] += frames


def test_lean_steps_compute_fewer_rows_and_codebooks(engines):
    lean, full = engines
    said = []
    for engine in (lean, full):
        engine.stats.update(steps=0, rows=0, codebooks=0)
        said.append(said_whole(engine, "one two three four five six", seed=1))
    np.testing.assert_array_equal(said[0][0], said[1][0])   # alone in slot 0: rows 0-3, codebooks as they start
    assert lean.stats["steps"] == full.stats["steps"] > lean.first_audio_steps
    assert lean.stats["rows"] == MIN_ROWS * lean.stats["steps"]      # slot 0 alone: the smallest batch, not 8
    assert full.stats["rows"] == SLOTS * full.stats["steps"]
    # the text-to-audio delay samples no codebook (either way); then lean samples only the started ones
    starts = lean.rows.audio_start
    steps = range(lean.stats["steps"])
    assert full.stats["codebooks"] == sum(len(starts) for s in steps if s >= min(starts))
    assert lean.stats["codebooks"] == sum(sum(1 for start in starts if s >= start) for s in steps)
    assert lean.stats["codebooks"] < full.stats["codebooks"]


@pytest.mark.parametrize("greedy", [False, True], ids=["seeded", "greedy"])
def test_a_turn_says_exactly_what_the_full_step_says(engines, greedy):
    """A turn in slot 5 of 8, its words arriving one at a time, stepped in `produce` rounds beside
    neighbours that start, speak and end around it: bit-identical audio and word times to the full step."""
    lean, full = engines
    for engine in engines:
        engine.gen.slot_temp_audio.fill_(0.0 if greedy else 0.6)
        engine.gen.slot_temp_text.fill_(0.0 if greedy else 0.6)
    try:
        expected, expected_words = said_whole(full, TEXT, seed=7, voice=TINY_VOICES[1])
        neighbours = [lean.start_turn(seed=20 + i) for i in range(5)]   # slots 0-4
        turn = lean.start_turn(voice=TINY_VOICES[1], seed=7)
        assert turn.slot == 5
        out: dict = {t: [] for t in [*neighbours, turn]}
        for n in neighbours[:3]:
            n.push_text(OTHER + " ")                                   # these speak all along
        talking = [*neighbours[:3], turn]
        for i, word in enumerate(TEXT.split()):
            turn.push_text(word + " ")
            if i == 4:
                neighbours[3].push_text("a short one")                 # starts mid-way and ends
                neighbours[3].end_text()
                talking.append(neighbours[3])
            for t, frames in lean.produce(talking, frames_each=1).items():
                out[t] += frames
        finish(lean, talking, out)
        got = np.concatenate([f.pcm for f in out[turn]])
        assert [f.index for f in out[turn]] == list(range(len(out[turn])))
        np.testing.assert_array_equal(got, expected)
        assert list(turn.gen.machine.transcript) == expected_words
    finally:
        for engine in engines:
            engine.gen.slot_temp_audio.fill_(engine.tts.temp)
            engine.gen.slot_temp_text.fill_(engine.tts.temp)


def test_first_frame_in_one_round_of_first_audio_steps_beside_speaking_turns(engines):
    """With three turns speaking, a new turn whose text is there gets its first frame in one `produce`
    call of exactly `first_audio_steps` steps, which returns with it; the speaking turns join only the
    steps they take their frames from (two each), so the starting turn's delay steps run alone, without
    the depformer."""
    lean, _ = engines
    speaking = [lean.start_turn(seed=30 + i) for i in range(3)]
    for t in speaking:
        t.push_text(OTHER + " ")
    while not all(t.gen.emitted for t in speaking):
        lean.produce(speaking)
    turn = lean.start_turn(seed=9)
    turn.push_text(TEXT + " ")
    lean.stats.update(steps=0, codebooks=0)
    steps_before = {t: t.gen.steps for t in speaking}
    produced = lean.produce([*speaking, turn], frames_each=2)
    assert [f.index for f in produced[turn]] == [0]             # the first frame returns at once
    assert lean.stats["steps"] == lean.first_audio_steps
    assert all(t.gen.steps - steps_before[t] == 2 and len(produced[t]) == 2 for t in speaking)
    # codebooks sampled: every codebook in the two steps the speaking turns joined, then only the new
    # turn's started ones (none in its first delay_steps steps)
    q = lean.tts.n_q
    assert lean.stats["codebooks"] <= 2 * q + (lean.first_audio_steps - lean.delay_steps) * q
    for t in [*speaking, turn]:
        t.cancel()


def test_the_delay_runs_while_the_lookahead_words_are_still_coming(engines):
    """The state machine needs `second_stream_ahead` words beyond the one it takes; the steps it forces
    to a pad (the turn's first ones, a word's tokens, the pad between words) take no word and run at once."""
    lean, _ = engines
    ahead = lean.machine.second_stream_ahead
    turn = lean.start_turn(seed=3)
    assert turn.step() is None and turn.gen.steps == 0          # no word yet: nothing to say, no step
    turn.push_text("hello ")
    assert turn.step() is None
    assert turn.gen.steps >= lean.machine.initial_padding       # the forced pads ran before the lookahead came
    assert len(turn.gen.machine.entries) <= ahead
    turn.cancel()


def test_a_produce_call_cut_short_resumes_where_it_stopped(engines):
    """The cascade's pump cuts a `produce` call when another turn wants frames (`stop`), so that the newcomer
    joins the next steps instead of waiting for a first frame; the cut turn goes on at its next call, and its
    audio is bit-identical to an uncut run's. A cut call is not a wait for words (`waits_for_text`)."""
    lean, _ = engines
    whole, _ = said_whole(lean, OTHER, seed=3)
    turn = lean.start_turn(seed=3)
    turn.push_text(OTHER)
    turn.end_text()
    frames, calls = [], 0
    while not turn.done:
        before = lean.stats["steps"]
        out = lean.produce([turn], frames_each=2, stop=lambda before=before: lean.stats["steps"] - before >= 3)
        assert lean.stats["steps"] - before <= 3
        assert not turn.waits_for_text
        frames += out[turn]
        calls += 1
    np.testing.assert_array_equal(np.concatenate([f.pcm for f in frames]), whole)
    assert calls >= lean.first_audio_steps // 3   # the first frame alone took several cut calls
