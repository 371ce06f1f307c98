#!/usr/bin/env python3
"""Run Kyutai's `moshi.server` (the installed package, unmodified) on CPU with local weights.

moshi 0.2.13's warm-up ends with `torch.cuda.synchronize()`, which fails without CUDA: it is made a
no-op here before the server module runs. Options of ours come before moshi's own arguments:
`--local DIR` serves a local model directory in the hub layout (config.json naming its files, e.g.
weights/tiny-moshi): moshi.server has flags for the weights, tokenizer and config but none for the
Mimi config that config.json names (`mimi_config_name`, fetched from the hub repo), so a copy of
config.json whose file names are `file://` paths (moshi's own way to force a local file) is written
to a temporary directory and passed as `--config-path`, with `--moshi-weight`, `--mimi-weight` and
`--tokenizer`. `--float32` loads the LM in float32 (moshi.server only offers bf16/fp16; our server
runs float32 on CPU, so this compares like with like), `--threads N` sets torch's CPU threads.

    python scripts/moshi_server_cpu.py --local weights/tiny-moshi --float32 --threads 1 -- \\
        --device cpu --port 8998 --static none
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--local", type=Path)
    ours, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if ours.local is not None:
        rest = [*local_flags(ours.local.resolve()), *rest]
    torch.cuda.synchronize = lambda *args, **kwargs: None  # type: ignore[assignment]  # CPU warm-up
    if ours.threads > 0:
        torch.set_num_threads(ours.threads)
    if ours.float32:
        from moshi.models import loaders

        get_moshi = loaders.CheckpointInfo.get_moshi

        def get_moshi_float32(self, *args, **kwargs):
            kwargs["dtype"] = torch.float32
            return get_moshi(self, *args, **kwargs)

        loaders.CheckpointInfo.get_moshi = get_moshi_float32  # type: ignore[method-assign]
    sys.argv = ["moshi.server", *rest]
    runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)  # its module body calls main()


def local_flags(directory: Path) -> list[str]:
    """moshi.server flags for a local model directory (see the module doc)."""
    config = json.loads((directory / "config.json").read_text())
    names = {"moshi_name": "model.safetensors", "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
             "tokenizer_name": "tokenizer_spm_32k_3.model"}
    for key in ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name", "lora_name"):
        if key in config or key in names:
            config[key] = "file://" + str(directory / config.get(key, names.get(key)))
    local_config = Path(tempfile.mkdtemp(prefix="moshi-server-")) / "config.json"
    local_config.write_text(json.dumps(config))
    files = {key: config[key].removeprefix("file://") for key in names}
    return ["--config-path", str(local_config), "--moshi-weight", files["moshi_name"],
            "--mimi-weight", files["mimi_name"], "--tokenizer", files["tokenizer_name"]]


if __name__ == "__main__":
    main()
