"""How every model here runs a step: without autograd, and with torch.compile off on CPU.

torch.compile buys nothing on CPU at these step sizes and costs seconds of start-up (~8 s for the
tiny Moshi), so it is switched off there; on CUDA moshi compiles and graphs as usual.

moshi switches compile off with `no_compile()`, which saves and restores one process-wide flag
(`moshi.utils.compile._compile_disabled`), and its transformer layers enter it themselves on CPU. Our
models step on several threads at once (STT, TTS, Moshi), so those saves and restores interleave: a
thread that leaves restores "enabled" while another is still inside its step, and that one's next
lazily compiled function (an RMS norm) starts a torch.compile on its model thread, which stalls it for
seconds (5-14 s on the 2-core CI machine). `compile_off()` holds the flag for every thread at once
instead: the first thread in sets it, the last one out restores it, so no CPU step ever sees it off.
"""

from __future__ import annotations

import contextlib
import threading
import typing as tp

import torch
from moshi.utils import compile as moshi_compile

_lock = threading.Lock()
_holders = 0          # threads inside compile_off() now
_saved = False        # the flag as the first of them found it


@contextlib.contextmanager
def compile_off() -> tp.Iterator[None]:
    """moshi's `no_compile()`, safe when several threads step models at once."""
    global _holders, _saved
    with _lock:
        if _holders == 0:
            _saved = moshi_compile._compile_disabled
        _holders += 1
        moshi_compile._compile_disabled = True
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                moshi_compile._compile_disabled = _saved


@contextlib.contextmanager
def inference(device: torch.device) -> tp.Iterator[None]:
    compile_guard = compile_off() if device.type == "cpu" else contextlib.nullcontext()
    with compile_guard, torch.no_grad():
        yield
