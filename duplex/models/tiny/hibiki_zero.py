"""The tiny Hibiki-Zero preset: a random-weight LM in the layout of `kyutai/hibiki-zero-3b-pytorch-bf16`.

Hibiki-Zero (speech translation FR/ES/PT/DE -> EN) is a moshi LM with 16 codebooks a side (n_q 32,
dep_q 16: the translation's 16 first, then the source speech's 16), a text card of 48k, grouped-query
attention in the main transformer (`kv_repeat` 2: half as many key/value heads as query heads, so half
the KV cache), RoPE on concatenated halves (`rope_concat`), a depformer whose 16 steps share 9 weight
sets (`depformer_weights_per_step_schedule`) and a LayerNorm per step (`depformer_norm`), acoustic
delays of 2 frames, `model_type: hibiki` and no conditioner (no CFG). docs/moshi-family.md lists where
each value comes from and which could not be checked offline.

Written with the real repo's file names and a config.json naming them, so moshi's `CheckpointInfo`
reads it as it reads the real one; shrunk widths and depths like the tiny Moshi. The Mimi is common.py's
with 16 codebooks (the real Mimi has 32; Hibiki-Zero uses 16).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from .common import MIMI_CONFIG_FILE, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated, write_tokenizer_and_mimi
from .common import MIMI_FILE as COMMON_MIMI_FILE
from .moshi import TINY_LM_CONFIG

log = logging.getLogger(__name__)

TINY_SEED = 42
FORMAT_VERSION = 1  # bump when the tiny architecture or layout changes, so stale files are regenerated
# The real repo's file names (hibiki-zero's pinned revision 23b3e0b4...).
LM_FILE = "hibiki-pytorch-77f82164@110.safetensors"
MIMI_FILE = "mimi-pytorch-e351c8d8@125.safetensors"
REAL_TOKENIZER_FILE = "tokenizer_spm_48k_multi6_2.model"
CODEBOOKS = 16   # a side

TINY_ZERO_MIMI_CONFIG = copy.deepcopy(TINY_MIMI_CONFIG)
TINY_ZERO_MIMI_CONFIG["quantizer"]["n_q"] = CODEBOOKS

# delays: text, then the translation's codebooks (semantic 0, acoustic 2), then the source's, alike.
DELAYS = [0] + ([0] + [2] * (CODEBOOKS - 1)) * 2
SCHEDULE = list(range(9)) + [8] * (CODEBOOKS - 9)   # 16 depformer steps over 9 weight sets

# The keys that make Hibiki-Zero's layout, at tiny widths (real values: real_size.HIBIKI_ZERO_3B).
TINY_HIBIKI_ZERO_LM_CONFIG = dict(
    TINY_LM_CONFIG, n_q=2 * CODEBOOKS, dep_q=CODEBOOKS, delays=DELAYS, num_heads=4, kv_repeat=2,
    hidden_scale=6, positional_embedding="rope_concat", max_period=20000,
    depformer_num_heads=4, depformer_kv_repeat=1, depformer_context=CODEBOOKS,
    depformer_weights_per_step_schedule=SCHEDULE, depformer_norm="layer_norm", depformer_dim_feedforward=None,
)


def ensure_tiny_hibiki_zero(directory: Path, seed: int = TINY_SEED) -> Path:
    """Returns `directory`, generating the tiny Hibiki-Zero checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed},
                            lambda staging: write_tiny_hibiki_zero(staging, seed), "tiny Hibiki-Zero weights")


def write_tiny_hibiki_zero(directory: Path, seed: int) -> None:
    from moshi.models import loaders

    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_ZERO_MIMI_CONFIG)
    (directory / TOKENIZER_FILE).rename(directory / REAL_TOKENIZER_FILE)
    (directory / COMMON_MIMI_FILE).rename(directory / MIMI_FILE)

    torch.manual_seed(seed + 3)
    lm_config = dict(TINY_HIBIKI_ZERO_LM_CONFIG, text_card=text_card)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    save_file(contiguous(lm.state_dict()), str(directory / LM_FILE))
    config = dict(lm_config, moshi_name=LM_FILE, mimi_name=MIMI_FILE, tokenizer_name=REAL_TOKENIZER_FILE,
                  mimi_config_name=MIMI_CONFIG_FILE, model_type="hibiki")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
