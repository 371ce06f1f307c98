"""scripts/gpu_check.py, the GPU run's one command, in its CPU profile (tiny presets, one size, a few steps):
it cannot rot before a GPU comes. Checks that every part ran and wrote its tables with the versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_profile_writes_every_table(tmp_path: Path):
    out = tmp_path / "gpu"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out), "--device", "cpu",
                          "--preset", "tiny"], capture_output=True, text=True, timeout=280, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    env = data["env"]
    assert env["device"] == "cpu" and env["torch"] and env["date"] and "cuda" in env and "driver" in env
    parts = data["parts"]
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(["moshi", "server", "persona", "cascade"], "ok")
    steps = parts["moshi"]["tables"]["steps"]
    assert [row["B"] for row in steps] == [2] and steps[0]["host_syncs_per_tick"] == 1 and steps[0]["p99_ms"] > 0
    loads = parts["server"]["tables"]["loads"]
    assert [row["share"] for row in loads] == [0.25, 0.5, 1.0] and all(row["p50_ms"] for row in loads)
    assert all(not row["errors"] for row in loads) and all(row["loop_cpu_ms_per_frame"] is not None for row in loads)
    prefill = parts["persona"]["tables"]["prefill"]
    assert [row["way"] for row in prefill] == ["parallel", "cached"] and prefill[1]["chunks"] == 1
    assert parts["cascade"]["tables"]["stt"] and parts["cascade"]["tables"]["llm_decode"]
    md = (out / "results.md").read_text()
    assert "## moshi: ok" in md and f"torch: {env['torch']}" in md and "| B | graphs |" in md


def test_a_part_out_of_time_keeps_its_rows_and_the_next_part_runs(tmp_path: Path):
    """An impossible budget for the step sweep: it stops as timed out, the tables are written, cascade still runs."""
    out = tmp_path / "gpu"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(out), "--device", "cpu",
                          "--preset", "tiny", "--parts", "moshi,cascade", "--sizes", "2,4", "--budget", "moshi=0.5",
                          "--budget", "cascade=250"],
                         capture_output=True, text=True, timeout=200, cwd=REPO)
    assert run.returncode == 1
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert parts["moshi"]["status"] == "timeout" and "budget" in parts["moshi"]["error"]
    assert parts["cascade"]["status"] == "ok"
    assert "## moshi: timeout" in (out / "results.md").read_text()
