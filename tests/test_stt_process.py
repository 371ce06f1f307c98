"""The speech recogniser in its own process (`SttProcess`): the same outputs as `SttBatch` in this process,
bit for bit, on real speech; a child that dies fails one step and comes back fresh; a checkpoint that cannot
load is a clear error; `close` ends the child. The server side (its default on CPU, a killed child while a
conversation talks) is in tests/test_cascade.py."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES
from duplex.models import spec
from duplex.models.stt import SttBatch, SttStepInput
from duplex.models.stt_process import SttProcess, SttProcessError
from duplex.models.tiny.stt import ensure_tiny_stt

from .test_stt_batch import frames, run, stream, two_utterances

SPEC = "tiny:stt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # both sides step with one thread: they round alike


@pytest.fixture(scope="module")
def checkpoint():
    ensure_tiny_stt(spec.WEIGHTS_DIR / "tiny-stt")
    return spec.resolve_checkpoint(SPEC)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return two_utterances(tmp_path_factory.mktemp("stt-process"))


@pytest.fixture
def process():
    stt = SttProcess(SPEC, 3, threads=1)
    yield stt
    stt.close()


def test_the_process_answers_as_the_batch_in_this_process_bit_for_bit(checkpoint, speech, process):
    a, b = speech
    # slot 0 speaks from the start; slot 2 starts later and is reset halfway through a second utterance
    b_frames = stream(b, start=5)
    schedule = {0: stream(a), 2: b_frames[:20] + stream(a)}
    ticks = max(len(plan) for plan in schedule.values())
    here = run(SttBatch(checkpoint, 3), schedule, ticks)
    there = run(process, schedule, ticks)
    assert (process.flush_frames, process.has_pause) == (SttBatch(checkpoint, 1).flush_frames, True)
    for slot in schedule:
        assert there[0][slot] == here[0][slot]                                  # text, piece by piece
        np.testing.assert_array_equal(np.array(there[1][slot]), np.array(here[1][slot]))   # pause probabilities
        assert there[2][slot] == here[2][slot]                                  # words and their times
    assert any(text for text in here[0][0]), "the tiny STT writes something on speech"


def test_a_killed_process_fails_one_step_then_comes_back_with_every_slot_fresh(checkpoint, speech, process):
    a, _ = speech
    pcm = frames(a)
    execute, reset = np.array([True, False, False]), np.zeros(3, dtype=bool)
    rows = np.zeros((3, FRAME_SAMPLES), dtype=np.float32)
    for frame in pcm[:10]:
        rows[0] = frame
        process.step(SttStepInput(rows.copy(), execute, reset))
    first_pid = process.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    rows[0] = pcm[10]
    with pytest.raises(SttProcessError, match="exited"):
        process.step(SttStepInput(rows.copy(), execute, reset))
    assert not process.alive
    # the next step starts a new child; its slot 0 hears frames 11.. as a new stream would
    after = run(process, {0: [(f, False) for f in pcm[11:]]}, len(pcm) - 11)
    fresh = run(SttBatch(checkpoint, 3), {0: [(f, False) for f in pcm[11:]]}, len(pcm) - 11)
    assert process.restarts == 1 and process.alive and process.pid != first_pid
    assert after[0][0] == fresh[0][0]
    np.testing.assert_array_equal(np.array(after[1][0]), np.array(fresh[1][0]))
    assert process.health() == {"process": process.pid, "alive": True, "restarts": 1}


def test_a_checkpoint_that_cannot_load_is_a_clear_error(tmp_path):
    with pytest.raises(SttProcessError, match=str(tmp_path / "missing")):
        SttProcess(str(tmp_path / "missing"), 1, threads=1)


def test_close_ends_the_child(process):
    pid = process.pid
    assert pid is not None and process.alive
    process.close()
    assert not process.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)           # reaped: gone, not a zombie
