"""The tiny Moshi preset: a random-weight Moshi LM + Mimi of the real architecture (shrunk widths and depths)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from .common import (
    MIMI_CONFIG_FILE, MIMI_FILE, TEXT_VOCAB, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated,
    write_tokenizer_and_mimi,
)

log = logging.getLogger(__name__)

TINY_SEED = 42
MOSHI_FILE = "model.safetensors"
FORMAT_VERSION = 4  # bump when the tiny architecture changes, so stale files are regenerated

# Moshi's LM, shrunk: same streams (1 text + 8 model audio + 8 user audio), same delays,
# same depformer layout; small widths and depths.
TINY_LM_CONFIG = {
    "dim": 64, "text_card": TEXT_VOCAB, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8,
    "card": 2048, "num_heads": 4, "num_layers": 2, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 750, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 64,
    "depformer_dim_feedforward": 128, "depformer_num_heads": 4, "depformer_num_layers": 1,
    "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 8,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


def ensure_tiny_moshi(directory: Path, seed: int = TINY_SEED) -> Path:
    """Returns `directory`, generating the tiny Moshi checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed},
                            lambda staging: write_tiny_moshi(staging, seed), "tiny Moshi weights")


def write_tiny_moshi(directory: Path, seed: int) -> None:
    """Writes config.json, the LM and Mimi safetensors and a sentencepiece tokenizer."""
    from moshi.models import loaders

    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_MIMI_CONFIG)

    torch.manual_seed(seed + 1)
    lm_config = dict(TINY_LM_CONFIG, text_card=text_card)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    save_file(contiguous(lm.state_dict()), str(directory / MOSHI_FILE))

    config = dict(lm_config)
    config.update(
        moshi_name=MOSHI_FILE, mimi_name=MIMI_FILE, mimi_config_name=MIMI_CONFIG_FILE,
        tokenizer_name=TOKENIZER_FILE, model_type="moshi",
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))


