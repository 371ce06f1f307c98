"""Tiny preset of Kyutai's streaming STT (`kyutai/stt-1b-en_fr`).

Same architecture and config keys as the real checkpoint, shrunk: a delayed-streams LM with no
depformer (dep_q 0) that reads all 32 Mimi codebooks of the user's audio and writes one text
stream, plus the extra linear heads whose softmax gives the end-of-turn ("pause") probabilities,
and `stt_config` (the text lags the audio by `audio_delay_seconds`). The Mimi is common.py's with 32
codebooks instead of 8, because the STT reads 32. The tokenizer comes from common.py.

Written deterministically from a seed into the hub layout, then loaded by moshi's own
`CheckpointInfo`, like the real one. Random weights babble: the text is not a transcript.
"""

from __future__ import annotations

import copy
import typing as tp
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

if tp.TYPE_CHECKING:
    from moshi.models.compression import MimiModel
    from moshi.models.lm import LMModel

from .common import (
    MIMI_CONFIG_FILE, MIMI_FILE, TEXT_VOCAB, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated,
    write_tokenizer_and_mimi,
)

log = logging.getLogger(__name__)

TINY_STT_SEED = 42
FORMAT_VERSION = 1  # bump when the tiny STT architecture changes, so stale files are regenerated
STT_FILE = "model.safetensors"
STT_CODEBOOKS = 32  # the real STT reads 32 Mimi codebooks

TINY_STT_MIMI_CONFIG = copy.deepcopy(TINY_MIMI_CONFIG)
TINY_STT_MIMI_CONFIG["quantizer"]["n_q"] = STT_CODEBOOKS

# The real config's keys, shrunk (real values in comments). The depformer keys are kept as in the
# real file: with dep_q 0 moshi builds no depformer from them.
TINY_STT_LM_CONFIG = {
    "card": 2048, "n_q": STT_CODEBOOKS, "dep_q": 0, "delays": [0] * (1 + STT_CODEBOOKS),
    "dim": 64, "text_card": TEXT_VOCAB, "existing_text_padding_id": 3,  # real: 2048, 8000
    "num_heads": 4, "num_layers": 2, "hidden_scale": 4.125, "causal": True,  # real: 16, 16
    "layer_scale": None, "context": 750, "max_period": 100000.0, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope",
    "depformer_dim": 64, "depformer_num_heads": 4, "depformer_num_layers": 1,  # real: 1024, 16, 6
    "depformer_dim_feedforward": None, "depformer_multi_linear": True, "depformer_pos_emb": "none",
    "depformer_weights_per_step": True, "cross_attention": False,
    "extra_heads_num_heads": 4, "extra_heads_dim": 6,    # as Kyutai ships them; head 2, class 0 = "pause"
}
# As the real model: the text trails the audio by 0.5 s, and no silence prefix is needed.
TINY_STT_CONFIG = {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}


def ensure_tiny_stt(directory: Path, seed: int = TINY_STT_SEED) -> Path:
    """Returns `directory`, generating the tiny STT checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed, "kind": "stt"},
                            lambda staging: write_tiny_stt(staging, seed), "tiny STT weights")


def write_tiny_stt(directory: Path, seed: int) -> None:
    """Writes config.json, the LM and Mimi safetensors, the Mimi config and the tokenizer."""
    from moshi.models import loaders

    text_card, mimi = write_tokenizer_and_mimi(directory, seed, TINY_STT_MIMI_CONFIG)

    lm_config = dict(TINY_STT_LM_CONFIG, text_card=text_card)
    torch.manual_seed(seed + 1)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    _shape_text_head(lm, mimi, seed)
    save_file(contiguous(lm.state_dict()), str(directory / STT_FILE))

    config = dict(
        lm_config, stt_config=dict(TINY_STT_CONFIG), model_type="stt",
        lm_gen_config={"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
        model_id={"sig": f"tiny{seed:04d}", "epoch": 0},
        moshi_name=STT_FILE, mimi_name=MIMI_FILE, mimi_config_name=MIMI_CONFIG_FILE,
        tokenizer_name=TOKENIZER_FILE,
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))


def _shape_text_head(lm: LMModel, mimi: MimiModel, seed: int) -> None:
    """Gives the random text head the shape of a trained STT's, so the tiny one writes words that
    follow the audio instead of repeating one token forever.

    A random transformer's (normed) output is dominated by one nearly constant direction, and the
    fed-back text token outweighs the audio: the argmax never moves. So: quiet the text feedback,
    project that constant direction out of the text and extra heads (they then read what the audio
    changes), and make "pad" (3) and "end of padding" (0) two opposite directions of the rest, as a
    trained model mostly hesitates between padding and starting a word.
    """
    with torch.no_grad():
        lm.text_emb.weight.mul_(0.3)
        constant = _mean_output(lm, mimi, seed)
        extra_heads = [tp.cast(torch.nn.Linear, head) for head in lm.extra_heads]
        for head in (lm.text_linear, *extra_heads):
            head.weight.sub_(torch.outer(head.weight @ constant, constant))
        for head in extra_heads:
            head.weight.mul_(4.0)  # so the tiny pause probabilities move with the audio, visibly
        generator = torch.Generator().manual_seed(seed + 2)
        axis = torch.randn(constant.shape[0], generator=generator)
        axis = axis - (axis @ constant) * constant
        axis = axis / axis.norm()
        lm.text_linear.weight[lm.text_padding_token_id] = 8.0 * axis     # mostly pads...
        lm.text_linear.weight[lm.end_of_text_padding_id] = -4.0 * axis   # ...some word boundaries


def _mean_output(lm: LMModel, mimi: MimiModel, seed: int, frames: int = 50) -> torch.Tensor:
    """The unit mean of the LM's normed output over 4 s of seeded noise bursts and silences."""
    from moshi.models import LMGen
    from moshi.utils.compile import no_compile

    generator = torch.Generator().manual_seed(seed + 3)
    mimi.set_num_codebooks(STT_CODEBOOKS)  # as CheckpointInfo.get_mimi does for an STT
    outputs: list[torch.Tensor] = []
    hook = lm.out_norm.register_forward_hook(lambda _m, _i, out: outputs.append(out.reshape(-1, out.shape[-1])))
    gen = LMGen(lm, use_sampling=False)
    try:
        with no_compile(), mimi.streaming(1), gen.streaming(1):
            for k in range(frames):
                loud = (k // 5) % 2 == 0
                frame = torch.randn(1, 1, mimi.frame_size, generator=generator) * (0.1 if loud else 0.0)
                gen.step(mimi.encode(frame))
    finally:
        hook.remove()
    mean = torch.cat(outputs).mean(dim=0)
    return mean / mean.norm()
