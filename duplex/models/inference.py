"""How every model here runs a step: without autograd, and with torch.compile off on CPU.

torch.compile buys nothing on CPU at these step sizes and costs seconds of start-up (~8 s for the
tiny Moshi), so moshi's `no_compile()` switches it off there; on CUDA moshi compiles and graphs as usual.
"""

from __future__ import annotations

import contextlib
import typing as tp

import torch
from moshi.utils.compile import no_compile


@contextlib.contextmanager
def inference(device: torch.device) -> tp.Iterator[None]:
    compile_guard = no_compile() if device.type == "cpu" else contextlib.nullcontext()
    with compile_guard, torch.no_grad():
        yield
