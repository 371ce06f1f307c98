"""How every model here runs a step: without autograd, and with torch.compile off on CPU.

torch.compile buys nothing on CPU at these step sizes and costs seconds of start-up (~8 s for the
tiny Moshi), so it is off there; on CUDA moshi compiles and graphs as usual.

Off for the whole process, once, not per step: moshi's switch is one process-global flag that its
`no_compile()` saves and restores. Several model threads (duplex, STT, TTS) step at once; entered and
left per step, the saves and restores interleave (B enters, A enters and saves "off", B leaves and
restores "on") and A's next lazily compiled kernel (rms norm, rope, gating) starts torch.compile
mid-step: tens of seconds with no frame answered on a loaded CPU (issue 24, item 16; docs/reliability.md).
Once the flag is held on for good, every save and restore (moshi's own included) is on -> on.
"""

from __future__ import annotations

import contextlib
import threading
import typing as tp

import torch
from moshi.utils.compile import no_compile

_compile_off: contextlib.AbstractContextManager | None = None
_compile_off_lock = threading.Lock()


def compile_off_for_process() -> None:
    """Switches moshi's torch.compile off for the rest of the process (idempotent, thread-safe)."""
    global _compile_off
    with _compile_off_lock:
        if _compile_off is None:
            guard = no_compile()
            guard.__enter__()      # never left: see the module docstring
            _compile_off = guard


@contextlib.contextmanager
def inference(device: torch.device) -> tp.Iterator[None]:
    if device.type == "cpu":
        compile_off_for_process()
    with torch.no_grad():
        yield
