"""`duplex eval --offline`: the scenarios as rows of the batched tiny model in process, scored exactly as the
real-time path scores them.

The real-time path here is `duplex eval --clock audio` against a real tiny server (2 slots, Opus on the
wire, an input queue that drops nothing): its recording places output frame k where input frame k was
complete, which is what the offline run records without a socket. Both sample with the same seed, so equality is exact or broken.
Speed is not asserted here: scripts/bench_eval_offline.py measures it side by side.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES, SAMPLE_RATE
from duplex.cli import main
from duplex.eval.generate import generate_set
from duplex.eval.offline import run_offline
from duplex.eval.offline_model import load_rows
from duplex.eval.scenarios import load_set, read_audio
from duplex.eval.wire import downlink, on_audio_clock, uplink

from .conftest import start_server


@pytest.fixture(scope="module")
def queue_server(tmp_path_factory):
    """Tiny duplex, 2 slots, an input queue that never drops: on a machine too busy to keep real time the
    server falls behind and catches up, and still answers every frame (the default bound would drop some)."""
    server = start_server(tmp_path_factory.mktemp("offline-server"), "--slots", "2", "--no-cascade",
                          "--max-queue-frames", "100000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scenario_set(tmp_path_factory):
    """Three scenarios of three lengths (the interruption is the longest): more than the 2 rows."""
    folder = tmp_path_factory.mktemp("offline") / "set"
    generate_set(folder, per_kind=1, kinds=["turn_taking", "pause_handling", "interruption"], seed=3)
    return folder


def test_offline_scores_equal_the_real_time_path(queue_server, scenario_set, tmp_path, capsys):
    scenarios = load_set(scenario_set)
    lengths = sorted(pcm.size for _, pcm in scenarios)
    assert len(scenarios) == 3 and lengths[0] < lengths[1] < lengths[2]
    live, offline = tmp_path / "live", tmp_path / "offline"
    common = ["--set", str(scenario_set), "--modes", "duplex", "--vad", "energy", "--seed", "5", "--tail-s", "0.3"]
    assert main(["eval", "--url", queue_server.http_url, "--out", str(live), "--clock", "audio",
                 "--concurrency", "2", "--warmup", "0", *common]) == 0, capsys.readouterr().err[-3000:]
    assert main(["eval", "--offline", "--rows", "2", "--out", str(offline), *common]) == 0, capsys.readouterr().err[-3000:]
    a = json.loads((live / "results.json").read_text())
    b = json.loads((offline / "results.json").read_text())
    assert b["meta"]["offline"]["rows"] == 2 and b["meta"]["clock"] == "audio" and a["meta"]["clock"] == "audio"
    # 3 scenarios over 2 rows: the third joins a freed row; a step never holds more than 2
    assert 1.5 <= b["meta"]["offline"]["rows_per_step"] <= 2
    live_entries, offline_entries = a["modes"]["duplex"]["scenarios"], b["modes"]["duplex"]["scenarios"]
    assert len(offline_entries) == 3
    assert offline_entries == live_entries          # every figure, the speech found, the frames the model answered
    assert b["modes"]["duplex"]["aggregate"] == a["modes"]["duplex"]["aggregate"]
    assert any(e["assistant_speech"] for e in offline_entries)   # the tiny model babbles: something was compared
    for entry in offline_entries:                   # and the recordings, sample for sample
        ours, theirs = read_audio(offline / entry["output"]), read_audio(live / entry["output"])
        assert ours.size == theirs.size and np.array_equal(ours, theirs), entry["id"]
        assert not np.any(ours[:FRAME_SAMPLES])     # nothing before input frame 0 is complete


def test_a_scenario_scores_the_same_alone_and_among_others(scenario_set):
    """The library call: a row that joins mid-run (after a shorter scenario left it), next to a longer one,
    gives the same recording as the scenario run alone; pcm16 on the wire (no codec delay)."""
    model, about = load_rows("tiny", None, 2, "cpu", "auto", 0, quiet=True)
    assert about["rows"] == 2 and model.rows == 2
    inputs = [pcm for _, pcm in load_set(scenario_set)]
    inputs.sort(key=len)
    short, middle, long = inputs
    together = run_offline(model, [short, long, middle], seed=11, codec="pcm16")
    alone = run_offline(model, [middle], seed=11, codec="pcm16")
    assert np.array_equal(together.recordings[2], alone.recordings[0])
    # one frame per step per row: the steps are the longest row's chain of frames
    frames = [-(-x.size // FRAME_SAMPLES) for x in (short, long, middle)]
    assert together.frames == frames and together.steps == max(frames[0] + frames[2], frames[1])
    assert [r.size for r in together.recordings] == [short.size, long.size, middle.size]
    # output frame k lies where input frame k was complete: the pcm16 round trip adds no delay, so the
    # recording is the model's frames from 80 ms on
    assert not np.any(together.recordings[0][:FRAME_SAMPLES]) and np.any(together.recordings[0])
    # another seed samples differently (the seed reaches the rows)
    assert not np.array_equal(run_offline(model, [middle], seed=12, codec="pcm16").recordings[0], alone.recordings[0])


def test_the_wire_replays_the_codecs():
    """Opus delays what the model hears by its decoder's lookahead; pcm16 only rounds to 16 bits."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    heard = uplink(tone, "pcm16")
    assert heard.shape == (-(-tone.size // FRAME_SAMPLES), FRAME_SAMPLES)
    assert np.abs(heard.reshape(-1)[: tone.size] - tone).max() < 1 / 32767
    opus = uplink(tone, "opus").reshape(-1)
    lag = int(np.argmax(np.correlate(opus[:4800], tone[:4800], "full"))) - 4799
    assert 0 < lag < FRAME_SAMPLES      # shifted: replaying the codec matters for what the model hears
    back = downlink(heard, "pcm16")
    assert back.size == heard.size and np.array_equal(on_audio_clock(back, 3000)[FRAME_SAMPLES:], back[: 3000 - FRAME_SAMPLES])
    with pytest.raises(ValueError, match="codec"):
        uplink(tone, "flac")


def test_offline_explains_bad_invocations(tmp_path, scenario_set, capsys):
    out = str(tmp_path / "x")
    cases = [(["--offline", "--url", "http://127.0.0.1:9"], "without --url"),
             (["--offline", "--modes", "duplex,cascade"], "duplex models only"),
             (["--url", "http://127.0.0.1:9", "--clock", "audio"], "--clock audio"),
             (["--offline", "--rows", "0"], "--rows"),
             (["--offline", "--preset", "nope"], "nope")]
    for flags, message in cases:
        assert main(["eval", "--out", out, "--set", str(scenario_set), "--vad", "energy", *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
