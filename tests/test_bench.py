"""`duplex bench` against a running server: both modes, results.json with distributions, a plot, a table."""

from __future__ import annotations

import json
import subprocess
import sys

from duplex.bench.latency import FIGURES


def test_bench_writes_results_plot_and_table(cascade_server, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "duplex.cli", "bench", "--url", cascade_server.http_url,
                             "--out", str(out), "--turns", "3", "--sessions", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["modes"]) == {"duplex", "cascade"}
    for key in ("machine", "device", "models", "slots", "sessions"):
        assert key in results
    duplex, cascade = results["modes"]["duplex"]["1"], results["modes"]["cascade"]["1"]
    assert set(duplex) == set(FIGURES)
    assert "frame_turnaround_ms" not in cascade
    for figures in (duplex, cascade):
        response = figures["response_latency_ms"]
        assert response["n"] >= 1 and 0 < response["p50"] <= response["p90"] <= response["p99"]
        assert figures["interrupt_latency_ms"]["n"] == 1       # the scripted cut in the middle turn
    assert duplex["frame_turnaround_ms"]["n"] > 50
    # the cascade cannot answer before the user's turn is over: it waits for the end-of-turn silence
    assert cascade["response_latency_ms"]["p50"] > 600
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| duplex | 1 | response_latency |" in result.stdout
