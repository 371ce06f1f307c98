"""The tiny PersonaPlex preset: a random-weight LM of PersonaPlex's architecture, in its published layout.

Same streams and delays as `nvidia/personaplex-7b-v1` (1 text + 8 model + 8 user codebooks, a depformer
over all 16: dep_q 16), shrunk widths and depths like the tiny Moshi. Written with PersonaPlex's file
names (`model.safetensors` with its stacked `in_proj_weight` / `out_proj.weight` tensor names, the Mimi
as `tokenizer-e351c8d8-checkpoint125.safetensors`, `tokenizer_spm_32k_3.model`, `voices.tgz`), so that
`models/personaplex.py` loads it exactly as it loads the real one. config.json carries the tiny LM's
sizes (the real layout has none: its loader uses the 7B constants).

The voices are WAV files of synthetic voiced sound (a pitch and its harmonics, syllable-like bursts),
10 s long like PersonaPlex's prompts, named like its voices (NATF2, NATM1, ...).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ...audio import SAMPLE_RATE, write_wav
from .. import personaplex as layout
from .common import TINY_MIMI_CONFIG, TOKENIZER_FILE, MIMI_FILE, contiguous, ensure_generated, write_tokenizer_and_mimi
from .moshi import TINY_LM_CONFIG

log = logging.getLogger(__name__)

TINY_SEED = 42
FORMAT_VERSION = 1  # bump when the tiny architecture or layout changes, so stale files are regenerated
TINY_PERSONAPLEX_LM_CONFIG = dict(TINY_LM_CONFIG, dep_q=16)
VOICES = {"NATF2": 210.0, "NATM1": 120.0, "VARF0": 240.0}   # name -> pitch (Hz)
VOICE_SECONDS = 10.0


def ensure_tiny_personaplex(directory: Path, seed: int = TINY_SEED) -> Path:
    """Returns `directory`, generating the tiny PersonaPlex checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed},
                            lambda staging: write_tiny_personaplex(staging, seed), "tiny PersonaPlex weights")


def write_tiny_personaplex(directory: Path, seed: int) -> None:
    from moshi.models import loaders

    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_MIMI_CONFIG)
    (directory / TOKENIZER_FILE).rename(directory / layout.TOKENIZER_FILE)
    (directory / MIMI_FILE).rename(directory / layout.MIMI_FILE)

    torch.manual_seed(seed + 2)
    lm_config = dict(TINY_PERSONAPLEX_LM_CONFIG, text_card=text_card)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    save_file(published_names(contiguous(lm.state_dict())), str(directory / layout.LM_FILE))
    (directory / layout.CONFIG_FILE).write_text(json.dumps(lm_config, indent=2))
    (directory / layout.VOICES_ARCHIVE).write_bytes(voices_archive(seed))


def published_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """moshi 0.2.13 keeps one linear per depformer step (`in_projs.{i}.weight`); PersonaPlex's files stack
    them into one tensor (`in_proj_weight`, `out_proj.weight`), as moshi's load hook expects to split."""
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[int, torch.Tensor]] = {}
    pattern = re.compile(r"^(.*)\.(in_projs|out_projs)\.(\d+)\.weight$")
    for name, tensor in state.items():
        match = pattern.match(name)
        if match is None:
            out[name] = tensor
            continue
        prefix, kind, index = match.groups()
        target = f"{prefix}.in_proj_weight" if kind == "in_projs" else f"{prefix}.out_proj.weight"
        stacked.setdefault(target, {})[int(index)] = tensor
    for target, parts in stacked.items():
        out[target] = torch.cat([parts[i] for i in range(len(parts))], dim=0).contiguous()
    return out


def voices_archive(seed: int) -> bytes:
    """voices.tgz: voices/<NAME>.wav for each tiny voice."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i, (name, pitch) in enumerate(VOICES.items()):
            wav = io.BytesIO()
            _write_wav_bytes(wav, synthetic_voice(pitch, VOICE_SECONDS, seed + i))
            info = tarfile.TarInfo(f"voices/{name}.wav")
            info.size = wav.tell()
            info.mtime = 0
            wav.seek(0)
            tar.addfile(info, wav)
    return buffer.getvalue()


def synthetic_voice(pitch_hz: float, seconds: float, seed: int) -> np.ndarray:
    """Voiced, syllable-paced sound at a given pitch: float32 [seconds * 24 kHz], about -20 dBFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(pitch_hz * vibrato) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, np.pi))
    pcm = tone * syllables ** 2
    return (0.1 * pcm / np.sqrt(np.mean(pcm ** 2))).astype(np.float32)


def _write_wav_bytes(handle: io.BytesIO, pcm: np.ndarray) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        write_wav(tmp.name, pcm)
        handle.write(Path(tmp.name).read_bytes())
