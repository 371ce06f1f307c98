"""`duplex bench` against a running server: both modes, two conversations begun apart (`--spread-s`), results.json
with distributions, a plot, a table."""

from __future__ import annotations

import json
import subprocess
import sys

from duplex.bench.latency import FIGURES
from duplex.protocol import CASCADE_STAGES


def test_bench_writes_results_plot_and_table(cascade_server, tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "duplex.cli", "bench", "--url", cascade_server.http_url,
                             "--out", str(out), "--turns", "3", "--sessions", "2", "--spread-s", "1.0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["modes"]) == {"duplex", "cascade"}
    for key in ("machine", "device", "models", "slots", "sessions"):
        assert key in results
    duplex, cascade = results["modes"]["duplex"]["2"], results["modes"]["cascade"]["2"]
    assert set(duplex) == set(FIGURES) | {"started_s"}
    for figures in (duplex, cascade):   # the second conversation began half the spread after the first
        first, second = figures["started_s"]
        assert first == 0.0 and 0.5 <= second < 1.5, figures["started_s"]
    assert results["spread_s"] == 1.0
    assert "frame_turnaround_ms" not in cascade
    for figures in (duplex, cascade):
        response = figures["response_latency_ms"]
        assert response["n"] >= 2 and 0 < response["p50"] <= response["p90"] <= response["p99"]
        assert figures["interrupt_latency_ms"]["n"] == 2       # the scripted cut in the middle turn, each
    assert duplex["frame_turnaround_ms"]["n"] > 50
    # the cascade's stages, as the server measured them, each turn that spoke (its `metrics`)
    assert "stages" not in duplex and list(cascade["stages"]) == list(CASCADE_STAGES)
    spoken = cascade["stages"]["stt_final"]["from_end_of_turn"]["n"]
    assert 2 <= spoken <= 6
    gaps = cascade["audio_gaps"]                      # every turn that spoke said how its audio played out
    assert gaps["turns"] == spoken and gaps["gaps"] >= 0 and gaps["gap_ms"] >= 0.0, gaps
    assert f"N = 2: {gaps['gaps']} in {spoken} turns" in result.stdout
    previous = 0.0
    for stage in CASCADE_STAGES:
        at, step = cascade["stages"][stage]["from_end_of_turn"], cascade["stages"][stage]["step"]
        assert at["n"] == step["n"] == spoken, (stage, cascade["stages"])
        # per turn each stage comes after the one before, so its percentiles do too
        assert previous <= at["p50"] <= at["p90"] <= at["p99"] and step["p50"] >= 0, (stage, cascade["stages"])
        previous = at["p50"]
        assert f"| 2 | {stage} |" in result.stdout
    # the cascade cannot answer before the user's turn is over: it waits for the end-of-turn silence
    assert cascade["response_latency_ms"]["p50"] > 600
    png = (out / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| duplex | 2 | response_latency |" in result.stdout
    assert "started" not in result.stdout
