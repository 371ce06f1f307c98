"""Streaming TTS on the tiny preset: real moshi TTS classes, real Mimi, random weights."""

from __future__ import annotations

import gc
import json
import sys

import numpy as np
import pytest
import torch

from duplex.models.tts import AUDIO_TOP_K, TtsCapacity, TtsEngineModel, UnknownVoice
from duplex.models.spec import WEIGHTS_DIR, checkpoint_from_dir
from duplex.models.tiny.tts import TINY_VOICES, ensure_tiny_tts

TEXT = "hello how are you today i am fine thank you what would you like to talk about"
OTHER_TEXT = "let us speak about music books science travel food and friends"


@pytest.fixture(scope="module")
def checkpoint():
    return checkpoint_from_dir(ensure_tiny_tts(WEIGHTS_DIR / "tiny-tts"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    # One intra-op thread, as a model worker on a small CPU should run: two threads on a shared
    # 2-core machine make step times erratic (seconds) whenever other processes are busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TtsEngineModel(checkpoint, slots=2, device="cpu", dtype=torch.float32)
    torch.set_num_threads(threads)


def speak(turn, text: str) -> tuple[list, int | None]:
    """Pushes `text` word by word, stepping after each word as a model thread would, then flushes.
    Returns the frames and how many words had been pushed when the first frame came."""
    frames, first_after = [], None
    for count, word in enumerate(text.split(), start=1):
        turn.push_text(word + " ")
        while (frame := turn.step()) is not None:
            frames.append(frame)
            first_after = first_after or count
    turn.end_text()
    while not turn.done:
        frame = turn.step()
        if frame is not None:
            frames.append(frame)
    return frames, first_after


def pcm(frames) -> np.ndarray:
    return np.concatenate([f.pcm for f in frames])


def test_checkpoint_has_the_real_layout(checkpoint):
    config = json.loads((checkpoint.moshi_weights.parent / "config.json").read_text())
    assert config["model_type"] == "tts" and config["demux_second_stream"] and config["cross_attention"]
    assert {k: v["type"] for k, v in config["conditioners"].items()} == {
        "speaker_wavs": "tensor", "cfg": "lut", "control": "lut"}
    assert config["fuser"]["cross"] == ["speaker_wavs"] and config["fuser"]["sum"] == ["control", "cfg"]
    assert checkpoint.tts_config["second_stream_ahead"] == 2
    assert config["n_q"] == config["dep_q"]  # the TTS generates every codebook, hears none


def test_streams_word_by_word(engine):
    turn = engine.start_turn(seed=1)
    frames, first_after = speak(turn, TEXT)
    words = TEXT.split()
    # Streaming: audio began while the text was still arriving, not after end_text.
    assert first_after is not None and first_after < len(words)
    assert all(f.pcm.shape == (1920,) and f.pcm.dtype == np.float32 for f in frames)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert np.abs(pcm(frames)).max() > 0.01  # babble, not silence
    spoken = [w for w, _ in turn.word_times]
    starts = [s for _, s in turn.word_times]
    assert spoken == words
    assert starts == sorted(starts) and starts[0] >= 0.0
    assert starts[-1] < len(frames) * 0.08
    assert turn.text_until(starts[2] + 1e-6) == " ".join(words[:3])


def test_words_split_across_deltas(engine):
    turn = engine.start_turn(seed=3)
    for piece in ["hel", "lo th", "ere, how", " are", " you", " to", "day my friend"]:
        turn.push_text(piece)
        while turn.step() is not None:
            pass
    turn.end_text()
    while not turn.done:
        turn.step()
    assert [w for w, _ in turn.word_times] == ["hello", "there,", "how", "are", "you", "today", "my", "friend"]


def test_same_seed_same_audio_whatever_the_other_slot_does(engine):
    alone, _ = speak(engine.start_turn(seed=7), TEXT)
    a = engine.start_turn(seed=7)
    b = engine.start_turn(voice=TINY_VOICES[1], seed=8)
    frames_a, frames_b = [], []
    # Interleave the two turns, with b's words arriving at its own pace.
    for i, word in enumerate(TEXT.split()):
        a.push_text(word + " ")
        if i < len(OTHER_TEXT.split()):
            b.push_text(OTHER_TEXT.split()[i] + " ")
        for turn, out in ((a, frames_a), (b, frames_b)):
            while (frame := turn.step()) is not None:
                out.append(frame)
    a.end_text()
    b.end_text()
    while not (a.done and b.done):
        for turn, out in ((a, frames_a), (b, frames_b)):
            if (frame := turn.step()) is not None:
                out.append(frame)
    assert len(frames_a) == len(alone)
    np.testing.assert_array_equal(pcm(frames_a), pcm(alone))
    assert [w for w, _ in b.word_times] == OTHER_TEXT.split()


def test_voice_selection(engine):
    first, _ = speak(engine.start_turn(voice=TINY_VOICES[0], seed=5), "one two three four five six")
    again, _ = speak(engine.start_turn(voice=TINY_VOICES[0], seed=5), "one two three four five six")
    other, _ = speak(engine.start_turn(voice=TINY_VOICES[1], seed=5), "one two three four five six")
    np.testing.assert_array_equal(pcm(first), pcm(again))
    n = min(len(first), len(other))
    assert not np.array_equal(pcm(first[:n]), pcm(other[:n]))
    assert sorted(engine.available_voices()) == sorted(TINY_VOICES)


def test_a_turns_audio_top_k_changes_its_audio_and_only_its_own(engine):
    """`top_k` (the cascade's audio top-k) reaches the TTS's audio sampling: top_k=1 (argmax codes) changes a
    seeded turn, and the slot's next turn, with none asked, samples with the default again."""
    text = "one two three four five six"
    default, _ = speak(engine.start_turn(seed=5), text)
    narrowed, _ = speak(engine.start_turn(seed=5, top_k=1), text)
    again, _ = speak(engine.start_turn(seed=5), text)
    n = min(len(default), len(narrowed))
    assert not np.array_equal(pcm(default[:n]), pcm(narrowed[:n]))
    np.testing.assert_array_equal(pcm(default), pcm(again))
    assert engine.gen.slot_top_k_audio.tolist() == [AUDIO_TOP_K] * engine.slots


def test_unknown_voice_is_a_clear_error(engine, checkpoint):
    with pytest.raises(UnknownVoice, match="unknown voice 'nobody/none.wav'; available: .*vctk/p225_023.wav"):
        engine.start_turn(voice="nobody/none.wav")
    with pytest.raises(UnknownVoice, match="unknown voice"):
        TtsEngineModel(checkpoint, slots=1, voice="nobody/none.wav")


def test_slots_cancel_and_drop(engine):
    a = engine.start_turn()
    b = engine.start_turn()
    with pytest.raises(TtsCapacity):
        engine.start_turn()
    a.push_text("hello how are you today ")
    a.step()                         # a half-said turn is in the slot: runs a few steps
    a.cancel()
    assert a.done and a.step() is None
    c = engine.start_turn()          # a's slot is free again
    del b, c                         # dropping a turn frees its slot too
    gc.collect()
    engine.start_turn()
    engine.start_turn()


def test_empty_turn_ends_at_once(engine):
    turn = engine.start_turn()
    turn.end_text()
    assert turn.step() is None and turn.done and turn.word_times == []


class FileAccess:
    """What the interpreter was asked to open, list or connect to while armed (a sys audit hook: the real calls)."""

    EVENTS = ("open", "os.listdir", "os.scandir", "socket.connect", "socket.getaddrinfo", "subprocess.Popen")
    _current: "FileAccess | None" = None
    _installed = False

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple]] = []

    def __enter__(self) -> "FileAccess":
        if not FileAccess._installed:
            sys.addaudithook(FileAccess._hook)
            FileAccess._installed = True
        FileAccess._current = self
        return self

    def __exit__(self, *exc) -> None:
        FileAccess._current = None

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        if FileAccess._current is not None and event in FileAccess.EVENTS:
            FileAccess._current.seen.append((event, args))


def test_a_voice_outside_the_servers_list_is_refused_without_touching_a_file(engine, checkpoint, tmp_path):
    """Issue 24 item 8: a client's `voice` was a file probe (any *.safetensors path) and a download trigger (hf://,
    file://, any repo entry). Only the server's own voices are offered; anything else is refused, naming them, the
    same way whether or not such a file exists, and nothing is opened, listed or fetched to decide."""
    real = engine.voice_path(TINY_VOICES[0])
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(real.read_bytes())   # a valid voice file, but not one of the server's
    asked = [str(planted), str(tmp_path / "missing.safetensors"), f"file://{planted}", "hf://kyutai/tts-voices/x.wav",
             f"{TINY_VOICES[0]}/../../../../etc/passwd", "../" + TINY_VOICES[0], "nobody/none.wav"]
    messages = []
    with FileAccess() as access:
        for voice in asked:
            with pytest.raises(UnknownVoice) as refused:
                engine.start_turn(voice=voice)
            messages.append(str(refused.value).replace(voice, "V"))
    assert access.seen == []
    assert len(set(messages)) == 1, messages   # no oracle: an existing file is refused like a missing one
    assert all(v in messages[0] for v in TINY_VOICES)   # the choices are named
    assert sorted(engine.available_voices()) == sorted(TINY_VOICES)
