"""`duplex eval` end to end against the tiny server, both modes: results.json, results.md and eval.png
agree with each other and with the recordings; `--score` of those recordings; `--compare` of two results.

The figures themselves mean nothing with random weights; what is checked is the pipeline: every
scenario played in real time, recorded on the scenario's timeline, scored, aggregated, reported.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES, write_wav
from duplex.cli import main
from duplex.eval.metrics import aggregate
from duplex.eval.report import ROWS, cell, lookup
from duplex.eval.scenarios import KINDS, load_set, read_audio
from duplex.eval.vad import EnergyDetector

from .conftest import start_server


@pytest.fixture(scope="module")
def eval_server(tmp_path_factory, llm_standin):
    """Tiny duplex and cascade, 4 slots each (a generated set of 4 scenarios at once), the LLM behind the local
    stand-in (as for the other cascade tests: quick, fixed replies)."""
    server = start_server(tmp_path_factory.mktemp("eval"), "--slots", "4", "--cascade-slots", "4",
                          "--llm-url", llm_standin.url, "--llm-timeout", "2")
    yield server
    server.stop()


def test_eval_both_modes_then_compare(eval_server, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--url", eval_server.http_url, "--out", str(out), "--per-kind", "1", "--concurrency", "4",
                 "--vad", "energy", "--warmup", "0"])   # (no warm-up: what is asserted does not depend on it)
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["modes"]) == ["duplex", "cascade"]
    assert results["meta"]["vad"] == "energy" and results["meta"]["scenarios"] == len(KINDS)
    scenarios = {s.id: (s, pcm) for s, pcm in load_set(out / "scenarios")}
    assert sorted(s.kind for s, _ in scenarios.values()) == sorted(KINDS)

    for mode, data in results["modes"].items():
        entries = data["scenarios"]
        assert data["failed"] == 0 and [e["id"] for e in entries] == sorted(scenarios)
        # the stored aggregate is the aggregate of the stored per-scenario figures
        assert data["aggregate"] == json.loads(json.dumps(aggregate(entries)))
        assert set(data["aggregate"]) == set(KINDS)
        for entry in entries:
            scenario, pcm = scenarios[entry["id"]]
            recording = read_audio(out / entry["output"])
            # the recording lies on the input's timeline, and the speech in it is the speech scored
            assert recording.size == pcm.size
            # audio is placed by arrival, on a timeline whose 0 is 80 ms before the first frame was sent: nothing can
            # land in the first frame (laid end to end by index, the first returned chunk would)
            assert not np.any(recording[:FRAME_SAMPLES])
            found = [[round(s, 3), round(e, 3)] for s, e in EnergyDetector().segments(recording)]
            assert found == entry["assistant_speech"]
            if mode == "duplex":
                assert entry["chunks_received"] > 0
                assert entry["assistant_speech"], "the tiny duplex model babbles: some speech must be heard"
            if mode == "cascade":
                # the cascade cannot speak before its end-of-turn silence (640 ms) has passed after the user's first
                # words (whether it speaks at all within a scenario depends on the machine's load)
                assert all(s >= scenario.user_speech[0][1] + 0.5 for s, _ in entry["assistant_speech"]), entry

    # results.md and stdout are the table of results.json
    table = (out / "results.md").read_text()
    assert table.strip() in printed.out
    rows = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ")[1:] for line in table.splitlines()[2:]}
    for label, path in ROWS:
        assert rows[label] == [cell(lookup(results["modes"][m]["aggregate"], path)) for m in ("duplex", "cascade")]
    png = (out / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # --score: the same recordings scored again give the same figures
    assert main(["eval", "--score", str(out), "--out", str(tmp_path / "again"), "--vad", "energy"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["modes"] == results["modes"] | {m: {**results["modes"][m], "scenarios": [
        {k: v for k, v in e.items() if k != "chunks_received"} for e in results["modes"][m]["scenarios"]]}
        for m in results["modes"]}

    # --compare: B - A for each figure of each mode both files have
    changed = copy.deepcopy(results)
    changed["modes"]["cascade"]["aggregate"]["turn_taking"]["tor"] = 0.25 + (results["modes"]["cascade"]["aggregate"]
                                                                             ["turn_taking"]["tor"] or 0)
    del changed["modes"]["duplex"]
    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    other.write_text(json.dumps(changed))
    capsys.readouterr()
    assert main(["eval", "--compare", str(out / "results.json"), str(other), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    lines = {line for line in printed.splitlines() if line.startswith("| cascade | turn-taking: TOR")}
    assert len(lines) == 1 and lines.pop().endswith("| +0.25 |")
    assert "| duplex |" not in printed     # only modes both files have
    assert (tmp_path / "cmp" / "compare.md").read_text().strip() == printed.strip()


def test_eval_explains_bad_invocations(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "x")]) == 2
    assert "--url" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "y"), "--set", str(empty)]) == 2
    assert "holds no scenario" in capsys.readouterr().err
    for per_kind in ("2", "1"):   # the set is generated before the server is tried; a rerun replaces it
        assert main(["eval", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "z"), "--kinds", "turn_taking",
                     "--per-kind", per_kind, "--modes", "cascade", "--vad", "energy"]) == 1
        assert "cannot reach the server" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "z" / "scenarios").iterdir()) == ["turn-00"]
    assert main(["eval", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "v"), "--set", str(empty),
                 "--fdb", str(empty)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["eval", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "w"), "--modes", "auto"]) == 2
    assert "--modes" in capsys.readouterr().err
    # --fdb without --url: converts only
    sample = tmp_path / "fdb" / "candor_turn_taking" / "7"
    sample.mkdir(parents=True)
    write_wav(str(sample / "input.wav"), np.zeros(16000 * 3, np.float32), 16000)
    (sample / "turn_taking.json").write_text(json.dumps([{"text": "[TURN-TAKING]", "timestamp": [2.01, 2.4]}]))
    assert main(["eval", "--fdb", str(tmp_path / "fdb"), "--out", str(tmp_path / "conv")]) == 0
    assert "--set" in capsys.readouterr().err
    assert [s.turn_end_s for s, _ in load_set(tmp_path / "conv" / "scenarios")] == [2.01]
    assert main(["eval", "--compare", str(tmp_path / "nope.json"), str(tmp_path / "nope.json")]) == 2
    assert "results.json" in capsys.readouterr().err
