"""Batched streaming STT (tiny Kyutai STT, random weights) on real speech: shapes, per-slot
independence, per-slot reset, word timestamps, the silence prefix, and loading from a local dir."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from duplex.audio import FRAME_SAMPLES
from duplex.models import spec
from duplex.models.stt import SttBatch, SttStepInput
from duplex.models.tiny.stt import ensure_tiny_stt

from .conftest import espeak


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny steps gain nothing from a second intra-op thread, and its spinning makes a shared 2-core
    machine crawl; outputs are compared within one process, so the count does not matter."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stt_dir():
    return ensure_tiny_stt(spec.WEIGHTS_DIR / "tiny-stt")


@pytest.fixture(scope="module")
def checkpoint(stt_dir):
    return spec.checkpoint_from_dir(stt_dir)


def two_utterances(folder) -> tuple[np.ndarray, np.ndarray]:
    """Two different utterances, each followed by a short silence."""
    gap = np.zeros(FRAME_SAMPLES * 4, dtype=np.float32)
    a = espeak("Hello there, can you hear me? Tell me about the weather.", folder / "a.wav")
    b = espeak("One two three, coffee or tea, let us go to the park.", folder / "b.wav")
    return np.concatenate([a, gap]), np.concatenate([b, gap])


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return two_utterances(tmp_path_factory.mktemp("stt-speech"))


def frames(pcm: np.ndarray) -> list[np.ndarray]:
    n = len(pcm) // FRAME_SAMPLES
    return [pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES] for k in range(n)]


def run(stt: SttBatch, schedule: dict[int, list[tuple[int, np.ndarray | None, bool]]], ticks: int):
    """schedule[slot] = per-tick (frame or None, reset). Returns, per slot and per executed tick,
    (texts, pauses, words completed)."""
    texts = {s: [] for s in schedule}
    pauses = {s: [] for s in schedule}
    words = {s: [] for s in schedule}
    rng = np.random.default_rng(0)
    for tick in range(ticks):
        # Rows of slots without a frame hold loud noise: a masked-out slot must ignore its row.
        pcm = rng.uniform(-0.5, 0.5, (stt.slots, FRAME_SAMPLES)).astype(np.float32)
        execute = np.zeros(stt.slots, dtype=bool)
        reset = np.zeros(stt.slots, dtype=bool)
        for slot, plan in schedule.items():
            frame, wipe = plan[tick] if tick < len(plan) else (None, False)
            reset[slot] = wipe
            if frame is not None:
                pcm[slot], execute[slot] = frame, True
        out = stt.step(SttStepInput(pcm, execute, reset))
        for slot in schedule:
            if execute[slot]:
                texts[slot].append(out.text[slot])
                pauses[slot].append(out.pause_prob[slot])
                words[slot].append(out.words[slot])
    return texts, pauses, words


def stream(pcm: np.ndarray, start: int = 0) -> list[tuple[np.ndarray | None, bool]]:
    """A slot that idles `start` ticks, then resets and plays `pcm`."""
    return [(None, False)] * start + [(f, i == 0) for i, f in enumerate(frames(pcm))]


def flat(per_tick):
    return [word for words in per_tick for word in words]


def assert_monotonic(words, limit_ms):
    previous_end = 0
    for word in words:
        assert word.text and word.text == word.text.strip()
        assert previous_end <= word.start_ms <= word.end_ms <= limit_ms, (word, previous_end)
        previous_end = word.end_ms


def test_step_shapes_text_pause_and_word_timestamps(checkpoint, voices):
    stt = SttBatch(checkpoint, slots=3)
    assert stt.has_pause and stt.flush_frames == 7 and stt.prefix_frames == 0  # the real en_fr settings
    a, b = voices
    schedule = {0: stream(a), 1: stream(b, start=5)}
    pcm = np.zeros((3, FRAME_SAMPLES), dtype=np.float32)
    out = stt.step(SttStepInput(pcm, np.array([True, False, True]), np.ones(3, dtype=bool)))
    assert len(out.words) == len(out.text) == 3 and out.pause_prob.shape == (3,)
    assert out.pause_prob.dtype == np.float32 and out.step_ms > 0
    assert np.isnan(out.pause_prob[1]) and np.isfinite(out.pause_prob[[0, 2]]).all()
    assert out.text == [None, None, None]  # the first steps' text is about audio before t = 0

    texts, pauses, words = run(stt, schedule, ticks=len(frames(b)) + 5)
    for slot, pcm in ((0, a), (1, b)):
        duration_ms = len(frames(pcm)) * 80
        assert all(t is None for t in texts[slot][:stt.release_frames])
        assert sum(t is not None for t in texts[slot]) >= 5, texts[slot]
        spoken = flat(words[slot])
        assert len(spoken) >= 3
        assert_monotonic(spoken, duration_ms)
        assert np.all((np.array(pauses[slot]) >= 0) & (np.array(pauses[slot]) <= 1))
        # Words are made of exactly the text pieces streamed (only the spaces differ).
        streamed = "".join(t for t in texts[slot] if t)
        assert streamed.replace(" ", "").startswith("".join(w.text for w in spoken).replace(" ", ""))

        flushed = stt.flush(slot)
        assert_monotonic(spoken + flushed.words, duration_ms + stt.delay_ms + 80)
        assert stt.state[slot].word_ids == []  # nothing left pending


def test_slot_output_does_not_depend_on_its_neighbours(checkpoint, voices):
    """Slot 0's text and pause outputs are bit-identical whether slot 1 idles or is busy with other
    speech, joins late, and is reset mid-stream. Slot 2 gets slot 0's audio with holes (ticks without
    a frame): a slot without a frame keeps its state, so its outputs are slot 0's too."""
    a, b = voices
    ticks = len(frames(a))
    alone = run(SttBatch(checkpoint, slots=3), {0: stream(a)}, ticks)
    busy_plan = stream(b, start=3)
    busy_plan[20] = (busy_plan[20][0], True)  # slot 1 reset mid-stream
    holes = stream(a, start=2)
    for tick in (9, 9, 16, 30, 30, 30):
        holes.insert(tick, (None, False))
    busy = run(SttBatch(checkpoint, slots=3), {0: stream(a), 1: busy_plan, 2: holes}, len(holes))
    for slot in (0, 2):
        assert alone[0][0] == busy[0][slot]
        assert np.array_equal(np.array(alone[1][0]), np.array(busy[1][slot]))
        assert alone[2][0] == busy[2][slot]
    assert any(t is not None for t in busy[0][1])  # the neighbour really produced output too


def test_reset_restarts_one_slot_only(checkpoint, voices):
    """Resetting slot 1 mid-stream: slot 0 goes on untouched, and slot 1 starts over exactly as a
    fresh slot would, its clock back at 0."""
    a, b = voices
    fresh = run(SttBatch(checkpoint, slots=2), {1: stream(b)}, len(frames(b)))
    restart_at = 25
    slot1 = stream(a)[:restart_at] + stream(b)
    ticks = len(slot1)
    reference = run(SttBatch(checkpoint, slots=2), {0: stream(a)}, ticks)
    both = run(SttBatch(checkpoint, slots=2), {0: stream(a), 1: slot1}, ticks)
    assert both[0][0] == reference[0][0] and both[2][0] == reference[2][0]
    assert np.array_equal(np.array(both[1][0]), np.array(reference[1][0]))
    assert both[0][1][restart_at:] == fresh[0][1]
    assert np.array_equal(np.array(both[1][1][restart_at:]), np.array(fresh[1][1]))
    assert flat(fresh[2][1]) and both[2][1][restart_at:] == fresh[2][1]


def test_local_dir_spec_and_silence_prefix(stt_dir, checkpoint, voices, tmp_path):
    """A local directory in the hub layout loads through resolve_checkpoint; its stt_config's silence
    prefix is fed to each new stream: same outputs as feeding that silence by hand, clock shifted."""
    local = tmp_path / "my-stt"
    shutil.copytree(stt_dir, local)
    config = json.loads((local / "config.json").read_text())
    config["stt_config"]["audio_silence_prefix_seconds"] = 0.24  # 3 frames
    (local / "config.json").write_text(json.dumps(config))
    info = spec.resolve_checkpoint(str(local))
    assert info.model_type == "stt" and info.stt_config["audio_silence_prefix_seconds"] == 0.24
    assert info.lm_config["dep_q"] == 0 and info.lm_config["n_q"] == 32

    a, _ = voices
    with_prefix = SttBatch(info, slots=2)
    assert with_prefix.prefix_frames == 3
    prefixed = run(with_prefix, {0: stream(a)}, len(frames(a)))
    silence = np.zeros(3 * FRAME_SAMPLES, dtype=np.float32)
    by_hand = run(SttBatch(checkpoint, slots=2), {0: stream(np.concatenate([silence, a]))}, len(frames(a)) + 3)
    np.testing.assert_array_equal(np.array(prefixed[1][0]), np.array(by_hand[1][0][3:]))
    release = with_prefix.release_frames - 3  # user frames whose text is still about t < 0
    assert prefixed[0][0][release:] == by_hand[0][0][3 + release:]
    assert all(t is None for t in prefixed[0][0][:release])


def test_tiny_stt_is_deterministic_and_a_preset(tmp_path):
    one = ensure_tiny_stt(tmp_path / "one", seed=7)
    two = ensure_tiny_stt(tmp_path / "two", seed=7)
    other = ensure_tiny_stt(tmp_path / "other", seed=8)
    for name in ("model.safetensors", "mimi.safetensors", "tokenizer.model", "config.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert (one / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    preset = spec.resolve_checkpoint("tiny:stt")
    assert preset.model_type == "stt" and preset.moshi_weights.parent == spec.WEIGHTS_DIR / "tiny-stt"


def test_refuses_a_checkpoint_that_is_not_an_stt():
    moshi = spec.resolve_checkpoint("tiny:moshi")
    with pytest.raises(ValueError, match="dep_q"):
        SttBatch(moshi, slots=1)
