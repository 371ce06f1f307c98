"""Random-weight models of the real sizes, built on the device directly (no 15 GB file): `random:<name>`.

The GPU check (scripts/gpu_check.py) measures the real architectures where no weights can be fetched (the
lent GPU machine reaches no hub). A `random:` spec is a moshi `CheckpointInfo` with no weight files:
moshi's own `get_moshi_lm(None, ...)` and `get_mimi(None, ...)` then build the modules on the target
device with their initial values, through the same loader calls as a download. The tokenizer is the tiny
preset's (its ids cover fewer than the real 32,000 text tokens: a random model's other ids show no text).

    random:moshi7b        moshi's default 7B LM config (32 layers, dim 4096, dep_q 8) + moshi's Mimi
    random:personaplex7b  the same LM with dep_q 16 (models/personaplex.py)
    random:stt1b          Kyutai STT 1B's architecture (16 layers, dim 2048, 32 codebooks, no depformer)
    random:hibiki2b       Hibiki 2B (24 layers, dim 2560, 16 codebooks per side, its conditioner: guided)
    random:hibiki1b       Hibiki 1B (16 layers, dim 2048, 8 codebooks per side, its conditioner: guided)
    random:hibikizero3b   Hibiki-Zero 3B as reconstructed in docs/moshi-family.md (28 layers, dim 2048,
                          kv_repeat 2, 16 + 16 codebooks), in the tiny Hibiki-Zero's layout
    random:jmoshi7b       J-Moshi: moshi's 7B config (its repo has none), the tiny J-Moshi's tokenizer

On the `meta` device these build in seconds with no memory: tests/test_real_size_meta.py counts their
parameters and KV caches against docs/deploy.md's arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import typing as tp

from moshi.models import loaders

from . import personaplex
from .tiny.hibiki import TINY_HIBIKI_CONFIG
from .tiny.hibiki_zero import TINY_HIBIKI_ZERO_LM_CONFIG
from .tiny.stt import TINY_STT_CONFIG, TINY_STT_LM_CONFIG

MOSHI_7B: dict = dict(loaders._lm_kwargs)
PERSONAPLEX_7B: dict = dict(personaplex.LM_CONFIG)
# Kyutai STT 1B (kyutai/stt-1b-en_fr): the tiny STT's keys at their real values.
STT_1B: dict = dict(TINY_STT_LM_CONFIG, dim=2048, text_card=8000, num_heads=16, num_layers=16, context=750,
                    depformer_dim=1024, depformer_num_heads=16, depformer_num_layers=6)
# Hibiki-Zero 3B: the tiny layout's keys at the sizes of docs/moshi-family.md (not all checked against its
# config.json, which no hub here could give: see there); moshi builds 3.13 B parameters from it.
HIBIKI_ZERO_3B: dict = dict(TINY_HIBIKI_ZERO_LM_CONFIG, dim=2048, text_card=48000, num_heads=16, num_layers=28,
                            context=3000, depformer_dim=1024, depformer_num_heads=16, depformer_num_layers=6)
# The preset LLM's architecture (HuggingFaceTB/SmolLM2-360M-Instruct's config.json), for transformers' LlamaConfig.
SMOLLM2_360M: dict = dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                          num_key_value_heads=5, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                          rms_norm_eps=1e-5, tie_word_embeddings=True)

# Hibiki 2B: moshi's configs/moshi_dev_2b.json (= rust/moshi-core's s2s_2b_16rvq_202501); Hibiki 1B: moshi's
# rust/s2st-1b.toml in the Python keys (its delays are not in the toml: Hibiki 2B's acoustic delay 2 assumed).
# Sources and what could not be checked offline: docs/moshi-family.md.
HIBIKI_2B: dict = dict(TINY_HIBIKI_CONFIG, dim=2560, text_card=48000, num_heads=20, num_layers=24, context=3000,
                       depformer_dim=1024, depformer_dim_feedforward=4224, depformer_num_heads=16,
                       depformer_num_layers=6)
# (The toml's feed-forward sizes are Rust's `dim * 4`, which moshi's Python writes as hidden_scale 4.125.)
HIBIKI_1B: dict = dict(HIBIKI_2B, dim=2048, num_heads=16, num_layers=16, n_q=16, dep_q=8, depformer_context=32,
                       delays=[0] + [0] + [2] * 7 + [0] + [2] * 7)
_LMS = {"moshi7b": (MOSHI_7B, "moshi"), "personaplex7b": (PERSONAPLEX_7B, "moshi"), "stt1b": (STT_1B, "stt"),
        "hibiki2b": (HIBIKI_2B, "hibiki"), "hibiki1b": (HIBIKI_1B, "hibiki"),
        "hibikizero3b": (HIBIKI_ZERO_3B, "hibiki-zero"), "jmoshi7b": (MOSHI_7B, "jmoshi")}
NAMES = tuple(_LMS)


def base_spec(name: str) -> str:
    """The tiny preset whose tokenizer (and STT settings) a `random:<name>` borrows."""
    if name not in _LMS:
        raise ValueError(f"no random:{name}; known: {', '.join('random:' + n for n in NAMES)}")
    return f"tiny:{_LMS[name][1]}"


def random_checkpoint(name: str, base: loaders.CheckpointInfo) -> loaders.CheckpointInfo:
    """`random:<name>` -> a CheckpointInfo whose LM and Mimi are built with initial values on load
    (`base`: the checkpoint of `base_spec(name)`)."""
    lm_config, kind = _LMS[name]
    none: tp.Any = None   # no weight files: moshi's loaders then build the modules with initial values
    lm_config = json.loads(json.dumps(lm_config))   # moshi's loader edits the conditioner's entry
    return dataclasses.replace(
        base, moshi_weights=none, mimi_weights=none, mimi_config=None, lm_config=lm_config,
        raw_config=dict(lm_config), lora_weights=None, lm_gen_config={},
        stt_config=dict(TINY_STT_CONFIG) if kind == "stt" else {},
    )


def parameters(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]
