"""Tiny preset of Kyutai's streaming TTS (`kyutai/tts-1.6b-en_fr`), with voices as in `kyutai/tts-voices`.

Same architecture and config keys as the real checkpoint, shrunk: a delayed-streams LM whose text
stream is muxed with a lookahead stream (`demux_second_stream`), that generates every audio
codebook itself (n_q == dep_q, no user stream), is steered by a voice through cross-attention on
speaker embeddings (`speaker_wavs`, a tensor conditioner) and by the `control`/`cfg` lookup
conditioners summed into its input (the real model is CFG-distilled: the CFG strength is a
condition, not a second batch). Mimi and the tokenizer come from `common.py`.

Written deterministically from a seed into the hub layout, then loaded by moshi's own
`CheckpointInfo` and `TTSModel.from_checkpoint_info`, like the real one. Voices live in a `voices/`
folder laid out like the voices repo; `tts_config.voice_repo` points at it (our one extension of
the real config: moshi ignores unknown `tts_config` keys).
"""

from __future__ import annotations

import json
import typing as tp
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

if tp.TYPE_CHECKING:
    from moshi.models.lm import LMModel

from .common import (
    MIMI_CONFIG_FILE, MIMI_FILE, TEXT_VOCAB, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated,
    write_tokenizer_and_mimi,
)

log = logging.getLogger(__name__)

TINY_TTS_SEED = 42
FORMAT_VERSION = 1  # bump when the tiny TTS architecture changes, so stale files are regenerated
TTS_FILE = "dsm_tts_tiny.safetensors"
VOICES_DIR = "voices"
SPEAKER_DIM = 16         # real: 512
SPEAKER_FRAMES = 25      # real: 125 (10 s of Mimi frames); all voices of one model share it
# Real voice names from kyutai/tts-voices, so the same `config.voice` strings work on both.
TINY_VOICES = (
    "expresso/ex03-ex01_happy_001_channel1_334s.wav",
    "vctk/p225_023.wav",
)
CFG_VALUES = ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]  # the real model's distilled CFG strengths

# The real config's keys, shrunk (real values in comments). 8 codebooks instead of 32 because the
# tiny Mimi has 8; the depformer weight schedule keeps the real shape: own weights for the first
# codebooks, then shared by groups.
TINY_TTS_LM_CONFIG = {
    "card": 2048, "n_q": 8, "dep_q": 8,                 # real: 32, 32
    "delays": [0, 0] + [2] * 7,                          # real: [0, 0] + [2] * 31
    "dim": 64, "text_card": TEXT_VOCAB, "existing_text_padding_id": 3,  # real: 2048, 8000
    "num_heads": 4, "num_layers": 2, "hidden_scale": 4.125, "causal": True,  # real: 16, 16
    "layer_scale": None, "context": 500, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope",
    "depformer_dim": 64, "depformer_num_heads": 4, "depformer_num_layers": 1,  # real: 1024, 16, 4
    "depformer_dim_feedforward": 128,                     # real: 3072
    "depformer_multi_linear": True, "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "depformer_weights_per_step_schedule": [0, 1, 2, 3, 4, 4, 5, 5],  # real: range(8) + [8]*8 + [9]*8 + [10]*8
    "depformer_low_rank_embeddings": 16,                  # real: 128
    "demux_second_stream": True, "text_card_out": None, "cross_attention": True,
}


def ensure_tiny_tts(directory: Path, seed: int = TINY_TTS_SEED) -> Path:
    """Returns `directory`, generating the tiny TTS checkpoint (and its voices) there first if missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed, "kind": "tts"},
                            lambda staging: write_tiny_tts(staging, seed), "tiny TTS weights")


def write_tiny_tts(directory: Path, seed: int) -> None:
    """Writes config.json, the LM, Mimi, the tokenizer and the voice embeddings."""
    from moshi.models import loaders

    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_MIMI_CONFIG)

    sig = f"tiny{seed:04d}"
    config = dict(
        TINY_TTS_LM_CONFIG, text_card=text_card, conditioners=_conditioners(),
        fuser={"cross_attention_pos_emb": True, "cross_attention_pos_emb_scale": 1,
               "sum": ["control", "cfg"], "prepend": [], "cross": ["speaker_wavs"]},
        tts_config={"audio_delay": 1.28, "second_stream_ahead": 2, "voice_repo": VOICES_DIR},
        model_id={"sig": sig, "epoch": 0},
        model_type="tts",
        lm_gen_config={"temp": 0.6, "text_temp": 0.6},
        moshi_name=TTS_FILE, mimi_name=MIMI_FILE, mimi_config_name=MIMI_CONFIG_FILE,
        tokenizer_name=TOKENIZER_FILE,
    )
    torch.manual_seed(seed + 1)
    # get_moshi_lm mutates the conditioner configs it is given: hand it a copy.
    lm = loaders.get_moshi_lm(None, lm_kwargs=json.loads(json.dumps(_lm_kwargs(config))),
                              device="cpu", dtype=torch.float32)
    _boost_new_word(lm)
    save_file(contiguous(lm.state_dict()), str(directory / TTS_FILE))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    write_tiny_voices(directory / VOICES_DIR, f".{sig}@0.safetensors", seed)


def _conditioners() -> dict:
    """The real model's three conditioners, with the tiny speaker-embedding width."""
    return {
        "speaker_wavs": {"type": "tensor", "tensor": {"dim": SPEAKER_DIM}},
        "cfg": {"type": "lut", "lut": {"n_bins": 7, "dim": 16, "tokenizer": "noop", "possible_values": CFG_VALUES}},
        "control": {"type": "lut", "lut": {"dim": TINY_TTS_LM_CONFIG["dim"], "n_bins": 1, "tokenizer": "noop",
                                           "possible_values": ["ok"]}},
    }


def _lm_kwargs(config: dict) -> dict:
    """The LM's constructor arguments: config.json minus what CheckpointInfo pops off."""
    popped = {"tts_config", "model_id", "model_type", "lm_gen_config", "moshi_name", "mimi_name",
              "mimi_config_name", "tokenizer_name"}
    return {k: v for k, v in config.items() if k not in popped}


def _boost_new_word(lm: LMModel) -> None:
    """A random text head almost never says "new word" (id 0) among ~100 ids, so the state machine
    would only move on when forced (every `max_padding` steps). A trained model's head mostly
    hesitates between "pad" and "new word": give the tiny one that shape (other logits zero, the
    two opposite), so it paces words on its own, about one every few steps."""
    with torch.no_grad():
        weight = lm.text_linear.weight
        keep = weight[3].clone() * 4.0 / weight[3].norm().clamp_min(1e-6)  # ~one word per 3-4 steps
        weight.zero_()
        weight[3] = keep
        weight[0] = -keep


def write_tiny_voices(directory: Path, suffix: str, seed: int) -> None:
    """One safetensors file per voice, named and shaped like the voices repo's: `<name><suffix>` holding
    `speaker_wavs` [1, SPEAKER_DIM, SPEAKER_FRAMES] (float32), with the model signature as metadata."""
    for index, name in enumerate(TINY_VOICES):
        generator = torch.Generator().manual_seed(seed * 1000 + index)
        embedding = torch.randn(1, SPEAKER_DIM, SPEAKER_FRAMES, generator=generator)
        path = directory / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sig, epoch = suffix.removeprefix(".").removesuffix(".safetensors").split("@")
        save_file({"speaker_wavs": embedding.contiguous()}, str(path), metadata={"sig": sig, "epoch": epoch})
