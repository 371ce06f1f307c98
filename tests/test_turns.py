"""End-of-turn detection on real speech (espeak-ng) with pauses."""

from __future__ import annotations

import numpy as np

from duplex.audio import FRAME_SAMPLES, rms_dbfs
from duplex.engines.turns import EndOfTurnDetector, PauseRule

from .conftest import espeak


def run(detector, pcm, pause=None):
    events = []
    for k in range(len(pcm) // FRAME_SAMPLES):
        frame = pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES]
        event = detector.update(rms_dbfs(frame), pause[k] if pause is not None else float("nan"))
        if event:
            events.append((k, event))
    return events


def test_two_spoken_turns_separated_by_silence(tmp_path):
    one = espeak("Hello, how are you today?", tmp_path / "a.wav")
    two = espeak("Tell me about the weather.", tmp_path / "b.wav")
    gap = np.zeros(24000, dtype=np.float32)
    pcm = np.concatenate([gap[:4800], one, gap, two, gap])
    events = run(EndOfTurnDetector(), pcm)
    kinds = [e.kind for _, e in events]
    assert kinds == ["speech_start", "turn_end", "speech_start", "turn_end"]
    first_end = events[1][1]
    # the turn's end is where the speech really ended (within a frame), not where it was detected
    last_voiced = 4800 + int(np.flatnonzero(np.abs(one) > 0.01)[-1])  # espeak pads with silence
    assert abs(first_end.end_ms - last_voiced / 24.0) <= 120
    assert (events[1][0] + 1) * 80 >= first_end.end_ms + 600  # detected once the silence rule holds


def test_short_click_is_not_speech_and_pause_head_ends_turns_sooner(tmp_path):
    click = np.zeros(FRAME_SAMPLES * 6, dtype=np.float32)
    click[100:400] = 0.5
    assert run(EndOfTurnDetector(), click) == []

    speech = espeak("Good morning.", tmp_path / "c.wav")
    pcm = np.concatenate([speech, np.zeros(24000, dtype=np.float32)])
    frames = len(pcm) // FRAME_SAMPLES
    energy_only = run(EndOfTurnDetector(), pcm)
    confident = run(EndOfTurnDetector(pause=PauseRule()), pcm, pause=np.full(frames, 0.9))
    assert energy_only[-1][1].kind == confident[-1][1].kind == "turn_end"
    assert confident[-1][0] < energy_only[-1][0]
