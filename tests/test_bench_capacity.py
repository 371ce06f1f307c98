"""The capacity benchmark's pure helpers (no timing here): the capacity search, the lag check, frame matching."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_capacity.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_capacity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_capacity", module)
    spec.loader.exec_module(module)
    return module


def test_capacity_search_steps_up_then_bisects_once():
    bench = _bench()
    tried: list[int] = []

    def served(n: int) -> bool:
        tried.append(n)
        return n <= 21

    capacity, order = bench.capacity_search(served, step=8, limit=100)
    assert order == tried == [8, 16, 24, 20]
    assert capacity == 20  # bisected once between 16 (pass) and 24 (fail), not refined further


def test_capacity_search_edges():
    bench = _bench()
    assert bench.capacity_search(lambda n: False, step=8, limit=100) == (0, [8, 4])
    assert bench.capacity_search(lambda n: n <= 3, step=8, limit=100) == (0, [8, 4])
    assert bench.capacity_search(lambda n: True, step=8, limit=20) == (16, [8, 16])  # limit reached


def test_growing_lag_is_more_than_one_frame():
    bench = _bench()
    assert not bench.growing_lag([30, 32, 31], [100, 105, 110])
    assert bench.growing_lag([30, 32, 31], [120, 125, 130])
    assert bench.growing_lag([30], [])  # frames missing at the end: not served


def test_frame_arrivals_count_decoded_samples():
    bench = _bench()
    arrivals: list[float] = []
    bench.frame_arrivals(arrivals, 1000, 1.0)   # headers and a partial frame
    bench.frame_arrivals(arrivals, 1920, 2.0)
    bench.frame_arrivals(arrivals, 3 * 1920 + 5, 3.0)  # two frames complete in one message
    assert arrivals == [2.0, 3.0, 3.0]
