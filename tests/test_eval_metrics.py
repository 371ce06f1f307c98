"""`duplex eval`'s scoring on synthetic audio and segments with known answers, its speech detectors,
its scenario format, the espeak-ng generator and the Full-Duplex-Bench converter (no server)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from duplex.audio import SAMPLE_RATE, read_wav_mono24k, write_wav
from duplex.eval import metrics
from duplex.eval.fdb import convert_fdb
from duplex.eval.generate import espeak, generate_set
from duplex.audio import resample
from duplex.eval.scenarios import Scenario, ScenarioError, load_set, save_scenario
from duplex.eval.vad import EnergyDetector, SileroDetector, merge_segments

ENERGY = EnergyDetector()


def recording(duration_s: float, *tones: tuple[float, float]) -> np.ndarray:
    """Silence with a 440 Hz tone (-12 dBFS) over each (start_s, end_s): stands for the assistant's speech."""
    pcm = np.zeros(int(duration_s * SAMPLE_RATE), dtype=np.float32)
    for start, end in tones:
        a, b = int(round(start * SAMPLE_RATE)), int(round(end * SAMPLE_RATE))
        pcm[a:b] = 0.35 * np.sin(2 * np.pi * 440 * np.arange(b - a) / SAMPLE_RATE)
    return pcm


def heard(duration_s: float, *tones: tuple[float, float]) -> list[tuple[float, float]]:
    return ENERGY.segments(recording(duration_s, *tones))


def test_energy_detector_finds_tones_where_they_are():
    assert heard(5.0, (1.0, 1.6), (3.2, 4.0)) == [(1.0, 1.6), (3.2, 4.0)]
    assert heard(3.0) == []
    # gaps up to bridge_ms are bridged, blips under min_speech_ms dropped
    assert heard(3.0, (0.5, 1.0), (1.06, 1.5)) == [(0.5, 1.5)]
    assert heard(3.0, (0.5, 0.54)) == []


def test_silero_finds_real_speech_at_its_offset_and_not_a_tone(tmp_path):
    speech = espeak("Hello there, how are you today?", "en-us", 165, tmp_path)
    pcm = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    offset = 1.5
    pcm[int(offset * SAMPLE_RATE):int(offset * SAMPLE_RATE) + speech.size] = speech
    found = SileroDetector().segments(pcm)
    assert found, "silero found no speech in espeak-ng speech"
    assert abs(found[0][0] - offset) < 0.05   # (through sphn.resample it would be 21 ms later)
    assert abs(found[-1][1] - (offset + speech.size / SAMPLE_RATE)) < 0.25
    assert SileroDetector().segments(recording(3.0, (0.5, 2.5))) == []


def test_merge_segments():
    assert merge_segments([(2.5, 3.0), (0.0, 1.0), (1.4, 1.8)], 0.5) == [(0.0, 1.8), (2.5, 3.0)]
    assert merge_segments([], 0.5) == []


def test_turn_taking_latency_is_the_offset_of_the_answer_after_the_turn_end():
    scenario = Scenario(id="t", kind="turn_taking", duration_s=6.0, turn_end_s=2.0)
    assert metrics.turn_taking(scenario, heard(6.0, (2.7, 4.2))) == {
        "took_turn": True, "latency_ms": 700.0, "overlapped_user": False}
    # a lone short sound is no turn; a short "Yes," that starts a longer answer is where the answer starts (FDB)
    assert metrics.turn_taking(scenario, heard(6.0, (2.2, 2.5)))["took_turn"] is False
    assert metrics.turn_taking(scenario, heard(6.0, (2.2, 2.5), (3.4, 5.0)))["latency_ms"] == 200.0
    # already speaking at the turn end: latency 0 (FDB clips negatives), flagged as overlap
    assert metrics.turn_taking(scenario, heard(6.0, (1.0, 3.0))) == {
        "took_turn": True, "latency_ms": 0.0, "overlapped_user": True}
    assert metrics.turn_taking(scenario, heard(6.0)) == {"took_turn": False, "latency_ms": None, "overlapped_user": False}


def test_speech_during_a_pause_is_a_takeover_and_a_short_sound_is_not():
    scenario = Scenario(id="p", kind="pause_handling", duration_s=6.0, pauses=[(2.0, 3.5)])
    assert metrics.pause_handling(scenario, heard(6.0, (2.2, 3.6)))["takeover"] is True
    assert metrics.pause_handling(scenario, heard(6.0, (2.4, 2.8)))["takeover"] is False   # backchannel-length
    assert metrics.pause_handling(scenario, heard(6.0, (4.0, 5.5)))["takeover"] is False   # after the user resumed
    assert metrics.pause_handling(scenario, heard(6.0))["takeover"] is False


def test_yield_time_is_when_the_assistant_stops_after_the_barge_in():
    scenario = Scenario(id="i", kind="interruption", duration_s=9.0, interruption=(4.0, 5.0))
    out = metrics.interruption(scenario, heard(9.0, (1.0, 4.34), (5.6, 6.8)), recording_end_s=9.0)
    assert out == {"speaking_at_onset": True, "yielded": True, "yield_ms": 340.0, "responded": True,
                   "response_latency_ms": 600.0}
    # talks through to the end of the recording (or nearly: no quiet after it is heard): did not yield or answer
    for end in (9.0, 8.7):
        out = metrics.interruption(scenario, heard(9.0, (1.0, end)), recording_end_s=9.0)
        assert out["speaking_at_onset"] is True and out["yielded"] is False and out["yield_ms"] is None
        assert out["responded"] is False
    # quiet at the onset: nothing to yield, an answer after the barge-in still counts
    out = metrics.interruption(scenario, heard(9.0, (5.2, 6.5)), recording_end_s=9.0)
    assert out["speaking_at_onset"] is False and out["yielded"] is None
    assert out["responded"] is True and out["response_latency_ms"] == 200.0


def test_backchannels_rate_takeover_and_timing():
    cues = [1.0, 2.0, 3.0]
    scenario = Scenario(id="b", kind="backchannel", duration_s=6.0, user_speech=[(0.0, 4.0)], backchannel_cues=cues)
    on_cue = metrics.backchannel(scenario, heard(6.0, (1.0, 1.2), (2.0, 2.2), (3.0, 3.2)))
    assert on_cue["takeover"] is False and on_cue["backchannels"] == 3 and on_cue["rate_per_s"] == 0.75
    off_cue = metrics.backchannel(scenario, heard(6.0, (0.2, 0.4), (1.4, 1.6), (2.5, 2.7)))
    assert off_cue["jsd"] > on_cue["jsd"]
    assert metrics.backchannel(scenario, heard(6.0, (1.0, 2.5)))["takeover"] is True
    assert metrics.backchannel(scenario, heard(6.0))["jsd"] == 1.0     # no backchannel at all (FDB's convention)
    assert metrics.backchannel(scenario, heard(6.0, (4.5, 5.0)))["backchannels"] == 0  # after the user finished


def test_js_distance_known_values():
    assert metrics.js_distance(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(0.0, abs=1e-6)
    assert metrics.js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(math.sqrt(math.log(2)), abs=1e-6)


def test_aggregate():
    scored = [{"kind": "turn_taking", "took_turn": True, "latency_ms": 100.0},
              {"kind": "turn_taking", "took_turn": True, "latency_ms": 300.0},
              {"kind": "turn_taking", "took_turn": False, "latency_ms": None},
              {"kind": "interruption", "speaking_at_onset": True, "yielded": True, "yield_ms": 200.0, "responded": False,
               "response_latency_ms": None},
              {"kind": "interruption", "speaking_at_onset": False, "yielded": None, "yield_ms": None, "responded": True,
               "response_latency_ms": 50.0}]
    out = metrics.aggregate(scored)
    assert out["turn_taking"] == {"n": 3, "tor": 0.667, "latency_ms": {"p50": 200.0, "p90": 280.0, "n": 2}}
    assert out["interruption"]["yield_rate"] == 1.0 and out["interruption"]["speaking_at_onset"] == 1
    assert out["interruption"]["tor"] == 0.5
    assert set(out) == {"turn_taking", "interruption"}


def test_scenario_format_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ScenarioError, match="needs 'pauses'"):
        Scenario(id="x", kind="pause_handling", duration_s=3.0).validate()
    with pytest.raises(ScenarioError, match="not inside"):
        Scenario(id="x", kind="pause_handling", duration_s=3.0, pauses=[(2.0, 4.0)]).validate()
    with pytest.raises(ScenarioError, match="unknown keys"):
        Scenario.from_json({"id": "x", "kind": "turn_taking", "duration_s": 1.0, "turn_end": 0.5})
    with pytest.raises(ScenarioError, match="holds no scenario"):
        load_set(tmp_path)
    save_scenario(tmp_path, Scenario(id="ok", kind="turn_taking", duration_s=1.0, turn_end_s=0.5),
                  np.zeros(SAMPLE_RATE, np.float32))
    (tmp_path / "ok" / "scenario.json").write_text("{not json")
    with pytest.raises(ScenarioError, match="not JSON"):
        load_set(tmp_path)


def test_generated_annotations_match_the_generated_audio(tmp_path):
    made = generate_set(tmp_path, per_kind=1, seed=3)
    loaded = load_set(tmp_path)
    assert sorted(s.kind for s in made) == sorted(s.kind for s, _ in loaded) == sorted(metrics_kinds())
    for scenario, pcm in loaded:
        assert scenario.duration_s == pytest.approx(pcm.size / SAMPLE_RATE, abs=1e-3)
        found = EnergyDetector(threshold_dbfs=-60, bridge_ms=300).segments(pcm)
        # every annotated stretch of user speech is where the detector hears it (to a 20 ms window)
        # (espeak's quiet fade-out can sit under the threshold at the end: up to 80 ms)
        for start, end in scenario.user_speech:
            assert any(abs(s - start) <= 0.021 and end - 0.08 <= e <= end + 0.021 for s, e in found), \
                (scenario.id, start, end, found)
        for start, end in scenario.pauses:
            assert not np.any(pcm[int(start * SAMPLE_RATE) + 1:int(end * SAMPLE_RATE) - 1])
        if scenario.kind == "interruption":
            assert scenario.interruption in scenario.user_speech and scenario.turn_end_s is not None
        if scenario.kind == "backchannel":
            assert scenario.backchannel_cues == [e for _, e in scenario.user_speech[:-1]]


def metrics_kinds() -> list[str]:
    from duplex.eval.scenarios import KINDS
    return list(KINDS)


def test_full_duplex_bench_layout_converts(tmp_path):
    src = tmp_path / "v1_0"

    def sample(folder: str, files: dict[str, object], seconds: float = 4.0) -> None:
        path = src / folder
        path.mkdir(parents=True)
        write_wav(str(path / "input.wav"), np.zeros(int(seconds * 16000), np.float32), 16000)
        for name, data in files.items():
            (path / name).write_text(json.dumps(data))

    sample("candor_pause_handling/1", {"pause.json": [{"text": "[PAUSE]", "timestamp": [3.32, 4.0]}]})
    sample("candor_turn_taking/7", {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [2.01, 2.4]}]})
    sample("synthetic_user_interruption/3", {"interrupt.json": [{"context": "Books?", "interrupt": "Fiction?",
                                                                  "timestamp": [1.5, 3.1]}]})
    sample("icc_backchannel/12", {"transcription.json": []})
    sample("v1_5/user_interruption/4", {"metadata.json": {"context_text": "a", "current_turn_text": "b",
                                                          "timestamps": [2.2, 3.0]}})
    sample("v1_5/background_speech/5", {"metadata.json": {"timestamps": [1.0, 2.0]}})
    sample("candor_pause_handling/9", {"pause.json": [{"timestamp": [3.5, 9.0]}]})   # past the end of input.wav

    written, skipped = convert_fdb(src, tmp_path / "set")
    by_id = {s.id: s for s, _ in load_set(tmp_path / "set")}
    assert {s.id for s in written} == set(by_id)
    assert by_id["candor_pause_handling-1"].pauses == [(3.32, 4.0)]
    assert by_id["candor_turn_taking-7"].turn_end_s == 2.01
    assert by_id["synthetic_user_interruption-3"].interruption == (1.5, 3.1)
    assert by_id["v1_5-user_interruption-4"].interruption == (2.2, 3.0)
    assert by_id["icc_backchannel-12"].kind == "backchannel" and by_id["icc_backchannel-12"].backchannel_cues == []
    assert by_id["candor_turn_taking-7"].duration_s == pytest.approx(4.0)
    assert read_wav_mono24k(str(tmp_path / "set" / "candor_turn_taking-7" / "input.wav")).size == 4 * SAMPLE_RATE
    reasons = {path.relative_to(src).as_posix(): why for path, why in skipped}
    assert set(reasons) == {"v1_5/background_speech/5", "candor_pause_handling/9"}
    assert "not inside" in reasons["candor_pause_handling/9"]


def test_resampling_keeps_time(tmp_path):
    """An impulse at 1.0 s of a 16 kHz file is at 1.0 s after reading at 24 kHz (sphn.resample moves it 32 ms):
    the one reader the client, `duplex bench` and `duplex eval` use."""
    x = np.zeros(16000 * 3, np.float32)
    x[16000] = 0.9
    write_wav(str(tmp_path / "click.wav"), x, 16000)
    for y in (resample(x, 16000, SAMPLE_RATE), read_wav_mono24k(str(tmp_path / "click.wav"))):
        assert y.size == 3 * SAMPLE_RATE and int(np.argmax(np.abs(y))) == SAMPLE_RATE


def test_score_dispatches_by_kind():
    turn = Scenario(id="t", kind="turn_taking", duration_s=6.0, turn_end_s=2.0)
    assert metrics.score(turn, heard(6.0, (2.5, 4.0)), 6.0)["latency_ms"] == 500.0
