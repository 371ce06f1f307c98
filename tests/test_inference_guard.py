"""The inference guard keeps torch.compile off on CPU for every model thread at once (issue 24, item 16).

moshi switches torch.compile off with one process-global flag (`no_compile()` saves and restores it).
Entered and left per step from several model threads (duplex, STT, TTS), the save/restore interleaves:
thread B enters (flag off), thread A enters (saves "off"), B leaves and restores "on" while A is still
mid-step, and A's next `torch_compile_lazy` function (rms norm, rope, gating) starts compiling:
tens of seconds with no frame answered on a loaded CPU. This is that interleaving, made deterministic.
"""

from __future__ import annotations

import threading

import torch
from moshi.utils.compile import torch_compile_lazy

from duplex.models.inference import inference

CPU = torch.device("cpu")


def test_no_model_thread_compiles_when_another_leaves_its_step_first(monkeypatch):
    compiled: list[str] = []

    def recording_compile(fn, *args, **kwargs):
        compiled.append(threading.current_thread().name)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)

    @torch_compile_lazy
    def kernel(x: torch.Tensor) -> torch.Tensor:   # stands for moshi's _rms_norm, apply_rope, gating
        return x + 1

    b_inside, a_inside, b_left = threading.Event(), threading.Event(), threading.Event()

    def thread_b() -> None:       # (the STT's step: in first, out first)
        with inference(CPU):
            b_inside.set()
            a_inside.wait(5)
        b_left.set()

    def thread_a() -> None:       # (the duplex step: still running when the STT's ends)
        b_inside.wait(5)
        with inference(CPU):
            a_inside.set()
            b_left.wait(5)
            kernel(torch.zeros(1))

    threads = [threading.Thread(target=thread_b, name="stt-model"), threading.Thread(target=thread_a, name="duplex-model")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b_left.is_set() and a_inside.is_set()
    assert compiled == [], f"torch.compile ran on {compiled} inside the CPU inference guard"
