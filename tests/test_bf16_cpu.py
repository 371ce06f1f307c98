"""`--dtype bfloat16` on CPU with the tiny presets: the GPU's dtype path (bf16 LM, float32 Mimi), without a GPU.

What differs from float32: the LM's weights, activations and KV cache are bf16 (Mimi stays float32, as
moshi's loader keeps it), so outputs differ from the float32 run's; what must hold is the same as in
float32: a greedy slot's output does not depend on its neighbours, and the server serves in bf16."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from duplex.models.moshi_batch import MoshiBatch, StepInput
from duplex.models.spec import resolve_checkpoint
from duplex.server.process import ServerProcess

SLOTS = 4
STEPS = 12


def _run(model: MoshiBatch, neighbours: bool) -> tuple[np.ndarray, list]:
    model.warmup(1)
    rng = np.random.default_rng(1)
    none = np.zeros(SLOTS, dtype=bool)
    pcm_out, text = [], []
    for k in range(STEPS):
        pcm = (rng.standard_normal((SLOTS, model.frame_samples)) * 0.1).astype(np.float32)
        if neighbours:
            pcm[1:] = np.random.default_rng(100 + k).standard_normal((SLOTS - 1, model.frame_samples)) * 0.3
        execute = np.ones(SLOTS, dtype=bool) if neighbours else np.array([True] + [False] * (SLOTS - 1))
        first = execute.copy() if k == 0 else none
        out = model.step(StepInput(pcm, execute, none, first, none))
        pcm_out.append(out.pcm[0].copy())
        text.append(out.text[0])
    return np.stack(pcm_out), text


@pytest.mark.parametrize("spec", ["tiny:moshi", "tiny:personaplex"])
def test_bf16_greedy_slot_is_bit_identical_whatever_the_neighbours_do(spec: str):
    model = MoshiBatch(resolve_checkpoint(spec), SLOTS, "cpu", torch.bfloat16)
    assert next(model.lm.parameters()).dtype == torch.bfloat16
    assert next(model.mimi.parameters()).dtype == torch.float32
    for slot in range(SLOTS):
        model.configure_slot(slot, model.defaults.updated({"temperature": 0.0, "text_temperature": 0.0}))
    alone_pcm, alone_text = _run(model, neighbours=False)
    busy_pcm, busy_text = _run(model, neighbours=True)
    assert np.array_equal(alone_pcm, busy_pcm) and alone_text == busy_text
    assert np.isfinite(alone_pcm).all() and np.abs(alone_pcm).max() > 0


def test_bf16_server_serves_a_conversation():
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_capacity.py"
    spec = importlib.util.spec_from_file_location("bench_capacity", script)
    assert spec is not None and spec.loader is not None
    bench = sys.modules.get("bench_capacity") or importlib.util.module_from_spec(spec)
    if "bench_capacity" not in sys.modules:
        sys.modules["bench_capacity"] = bench
        spec.loader.exec_module(bench)
    audio = (np.random.default_rng(0).standard_normal(24000 * 6) * 0.1).astype(np.float32)
    with ServerProcess("--preset", "tiny", "--no-cascade", "--slots", "2", "--device", "cpu", "--dtype", "bfloat16") as server:
        load = bench.run_load(server.http_url, "ws_pcm16", 1, bench.Payloads(audio, 30), aligned=False)
    assert not load["errors"] and load["turnaround_ms"]["n"] > 0 and load["clients_served_frames"] == 1
