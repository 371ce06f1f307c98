"""A moshi repo without config.json (J-Moshi's `nu-dialogue/j-moshi-ext`), read the way moshi reads it.

moshi 0.2.13's `CheckpointInfo.from_hf_repo` takes a repo without config.json for a "legacy" Moshi 7B:
the files have moshi's fixed names (`model.safetensors`, the Mimi `tokenizer-e351c8d8-checkpoint125.safetensors`,
the text tokenizer `tokenizer_spm_32k_3.model`), the LM config is None (moshi's 7B defaults, `_lm_kwargs`),
the Mimi config is moshi's own, and `model_type` is "moshi". This module applies the same rules to a
local directory (moshi's own code only reaches them through the hub).

A tiny preset in this layout (tiny/jmoshi.py) has no config.json either; it carries the shrunk sizes that
a real repo takes from moshi's defaults in `tiny_lm_config.json` (and its Mimi's in `mimi_config.json`),
files that only tiny layouts have.
"""

from __future__ import annotations

import json
from pathlib import Path

from moshi.models import loaders

FILES = (loaders.MOSHI_NAME, loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME)
TINY_LM_CONFIG_FILE = "tiny_lm_config.json"      # tiny layouts only
TINY_MIMI_CONFIG_FILE = "mimi_config.json"        # tiny layouts only


def is_legacy(directory: Path, other_markers: tuple[str, ...] = ()) -> bool:
    """No config.json, moshi's three fixed file names, none of `other_markers` (another layout's files), and
    an LM whose depformer predicts 8 codebooks, as moshi's 7B constants say (PersonaPlex, whose files have
    the same names, predicts 16: its folder is not this layout even without its voices)."""
    if (directory / "config.json").exists() or any((directory / m).exists() for m in other_markers):
        return False
    if not all((directory / name).exists() for name in FILES):
        return False
    return depformer_codebooks(directory / loaders.MOSHI_NAME) == loaders._lm_kwargs["dep_q"]


def depformer_codebooks(weights: Path) -> int:
    """How many codebooks an LM's depformer predicts: its `linears.<i>` output heads, read from the
    safetensors header only (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return sum(1 for key in f.keys() if key.startswith("linears.") and key.endswith(".weight"))


def checkpoint_from_legacy(directory: Path) -> loaders.CheckpointInfo:
    """The CheckpointInfo moshi builds for a repo without config.json, from local files."""
    lm_config = mimi_config = None
    if (directory / TINY_LM_CONFIG_FILE).exists():
        lm_config = json.loads((directory / TINY_LM_CONFIG_FILE).read_text())
    if (directory / TINY_MIMI_CONFIG_FILE).exists():
        mimi_config = json.loads((directory / TINY_MIMI_CONFIG_FILE).read_text())
    moshi_weights, mimi_weights, tokenizer = (directory / name for name in FILES)
    return loaders.CheckpointInfo(
        moshi_weights=moshi_weights, mimi_weights=mimi_weights, tokenizer=tokenizer,
        lm_config=lm_config, raw_config=None, mimi_config=mimi_config, model_type="moshi",
    )
