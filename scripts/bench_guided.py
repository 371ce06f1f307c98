#!/usr/bin/env python3
"""The bare batched step of tiny Moshi and tiny Hibiki (guided: two rows per conversation), side by side.

N conversations, every slot active, real Mimi encode -> LMGen step -> Mimi decode, no sockets. The two
models step in turn (A, B, A, B, ...) so that the machine's other load falls on both alike; prints each
one's step p50/p90 and the share of the 80 ms real-time budget it takes.

    OMP_NUM_THREADS=1 python scripts/bench_guided.py --sessions 16 --steps 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duplex.models.moshi_batch import MoshiBatch, StepInput  # noqa: E402
from duplex.models.sampling import SamplingSettings  # noqa: E402
from duplex.models.spec import resolve_checkpoint  # noqa: E402

BUDGET_MS = 80.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cfg-coef", type=float, default=3.0, help="the Hibiki conversations' cfg_coef")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.sessions
    models = {"tiny": MoshiBatch(resolve_checkpoint("tiny:moshi"), n, "cpu", torch.float32),
              "tiny-hibiki": MoshiBatch(resolve_checkpoint("tiny:hibiki"), n, "cpu", torch.float32)}
    for model in models.values():
        model.warmup()
        for slot in range(n):
            model.configure_slot(slot, SamplingSettings(seed=slot, cfg_coef=args.cfg_coef if model.guidance else 1.0))
    rng = np.random.default_rng(0)
    ones, none = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    times: dict[str, list[float]] = {name: [] for name in models}
    for k in range(args.steps):
        pcm = (rng.standard_normal((n, 1920)) * 0.1).astype(np.float32)
        for name, model in models.items():
            start = time.perf_counter()
            model.step(StepInput(pcm, ones, none, ones if k == 0 else none, none))
            times[name].append((time.perf_counter() - start) * 1000.0)
    print(f"{n} conversations, {args.steps} steps each, interleaved; budget {BUDGET_MS:.0f} ms a step")
    print("| model | rows computed | step p50 ms | step p90 ms | p90 / 80 ms |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        p50, p90 = np.percentile(times[name][5:], [50, 90])
        rows = 2 * n if model.guidance else n
        print(f"| {name} | {rows} | {p50:.1f} | {p90:.1f} | {p90 / BUDGET_MS:.2f} |")
    ratio = np.median(times["tiny-hibiki"][5:]) / np.median(times["tiny"][5:])
    print(f"tiny-hibiki / tiny step p50: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
