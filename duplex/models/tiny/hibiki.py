"""The tiny Hibiki preset: a random-weight LM in Hibiki 2B's layout (speech translation, guided), shrunk.

What makes it Hibiki's layout (sources in docs/moshi-family.md): config.json says `model_type: hibiki`;
32 audio codebooks, 16 per side (dep_q 16), delays 2 on the acoustic codebooks; a lookup-table conditioner
`description` (values very_bad .. very_good) summed into the input (`fuser: {sum: [description]}`), which
classifier-free guidance uses; a long context and rope max period 100,000; an `lm_gen_config`. Only the
widths, depths and vocabularies are small. Mimi is the tiny one with 32 quantizers, as the real Mimi has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .common import (
    MIMI_CONFIG_FILE, MIMI_FILE, TEXT_VOCAB, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated,
    write_tokenizer_and_mimi,
)
from .moshi import TINY_SEED

MOSHI_FILE = "model.safetensors"
FORMAT_VERSION = 1  # bump when the tiny architecture changes, so stale files are regenerated

ACOUSTIC_DELAY = 2
# Hibiki 2B's keys (moshi's configs/moshi_dev_2b.json, rust/moshi-core s2s_2b_16rvq_202501), small sizes.
TINY_HIBIKI_CONFIG: dict = {
    "dim": 64, "text_card": TEXT_VOCAB, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 16,
    "card": 2048, "num_heads": 4, "num_layers": 2, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 750, "max_period": 100000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 64,
    "depformer_dim_feedforward": 128, "depformer_num_heads": 4, "depformer_num_layers": 1,
    "depformer_layer_scale": None, "depformer_multi_linear": True, "depformer_context": 16,
    "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0] + [0] + [ACOUSTIC_DELAY] * 15 + [0] + [ACOUSTIC_DELAY] * 15,
    "conditioners": {
        "description": {
            "type": "lut",
            "lut": {"n_bins": 31, "dim": 16, "tokenizer": "noop",
                    "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"]},
        },
    },
    "fuser": {"sum": ["description"]},
}
# moshi's LMGen defaults; the real checkpoints' own lm_gen_config could not be read offline.
TINY_LM_GEN_CONFIG = {"temp": 0.8, "temp_text": 0.7, "top_k": 250, "top_k_text": 25}
TINY_HIBIKI_MIMI_CONFIG: dict = {**TINY_MIMI_CONFIG, "quantizer": {**TINY_MIMI_CONFIG["quantizer"], "n_q": 32}}


def ensure_tiny_hibiki(directory: Path, seed: int = TINY_SEED) -> Path:
    """Returns `directory`, generating the tiny Hibiki checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed},
                            lambda staging: write_tiny_hibiki(staging, seed), "tiny Hibiki weights")


def write_tiny_hibiki(directory: Path, seed: int) -> None:
    """Writes config.json (Hibiki's keys), the LM (with its conditioner) and Mimi safetensors, a tokenizer."""
    from moshi.models import loaders

    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_HIBIKI_MIMI_CONFIG)
    torch.manual_seed(seed + 3)
    lm_config = json.loads(json.dumps(dict(TINY_HIBIKI_CONFIG, text_card=text_card)))   # moshi's loader edits it
    lm = loaders.get_moshi_lm(None, lm_kwargs=json.loads(json.dumps(lm_config)), device="cpu", dtype=torch.float32)
    with torch.no_grad():   # the lookup table starts near zero: make the conditions differ visibly
        assert lm.condition_provider is not None
        for parameter in lm.condition_provider.parameters():
            parameter.normal_(0.0, 1.0)
    save_file(contiguous(lm.state_dict()), str(directory / MOSHI_FILE))

    config = dict(lm_config)
    config.update(
        moshi_name=MOSHI_FILE, mimi_name=MIMI_FILE, mimi_config_name=MIMI_CONFIG_FILE,
        tokenizer_name=TOKENIZER_FILE, model_type="hibiki", lm_gen_config=TINY_LM_GEN_CONFIG,
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
