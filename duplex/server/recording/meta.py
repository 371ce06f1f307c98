"""What every recording's `meta.json` says about the server: version, model specs, device, dtype, slots,
the settings that shape the output, and the SHA-256 of each weight file (hashed once, in a thread, at
start: a 7B model's files take a while, and a recording begun before the hashes are ready gets them in
its final `meta.json`).

The model facts (specs, device, weight files) come from the composition root (`server/loading.py`):
this package never reads a model itself.
"""

from __future__ import annotations

import hashlib
import platform
import typing as tp
from pathlib import Path

from ..options import ServeOptions

CHUNK = 8 * 1024 * 1024

WeightFiles = tp.Callable[[str, str], list[Path]]   # (model name, spec) -> the files its weights load from


def server_meta(options: ServeOptions, specs: dict[str, str], device: str, dtype: str) -> dict[str, tp.Any]:
    import moshi
    import torch

    return {
        "preset": options.preset, "models": specs, "device": device, "dtype": dtype,
        "slots": {"duplex": options.slots, "cascade": options.cascade_slots},
        "settings": {"interrupt_hold_ms": options.interrupt_hold_ms, "max_wait_ms": options.max_wait_ms,
                     "speech_threshold_dbfs": options.speech_threshold_dbfs,
                     "end_of_turn_silence_ms": options.end_of_turn_silence_ms,
                     "llm_max_tokens": options.llm_max_tokens,
                     "llm_words_ahead": options.llm_words_ahead, "voice": options.voice},
        "versions": {"torch": torch.__version__, "moshi": getattr(moshi, "__version__", "?"),
                     "python": platform.python_version()},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_job(specs: dict[str, str], weight_files: WeightFiles) -> tp.Callable[[], dict]:
    """The hashing of every model's weight files, to run in a thread (a failure is written, never raised)."""
    specs = {k: v for k, v in specs.items() if k != "llm_model"}

    def job() -> dict:
        out: dict[str, dict[str, str]] = {}
        for name, spec in specs.items():
            try:
                out[name] = {str(p.name): sha256(p) for p in weight_files(name, spec)}
            except Exception as exc:   # metadata only: say why, never stop the server
                out[name] = {"error": str(exc)}
        return out
    return job
