"""PersonaPlex's precomputed voice prompts (`NAME.pt`): read them, and write them from a voice's codes.

PersonaPlex can save a voice prompt as the main transformer's *input embeddings* for the prompt's voice
columns instead of audio: `{"embeddings": [E, 1, 1, dim], "cache": [1, 17, R]}`, E = Tv - 1 for a voice of
Tv frames (its first model call only fills its token cache), and its LMGen token cache (a ring of R columns)
as it stood after the voice. Column j of the prompt (models/persona.py, models/prefill.py) is embedding j for
j < E; the token columns that follow need the last voice frame's codes and the delayed codebooks of the one
before, which the saved cache holds: column Tv - 1 at ring index (Tv - 1) % R, column Tv at Tv % R.

`persona.read_voice` turns such a file into `VoiceEmbeddings` (embeddings + the codes that can be recovered,
zeros elsewhere: those frames are never read as tokens). `write_voice` here makes one from a voice's Mimi
codes with this project's model, in the same format (for tests, and to precompute a folder of voices).
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import torch

from .persona import build_prompt


def write_voice(path: Path, lm: tp.Any, codes: torch.Tensor) -> None:
    """codes [8, Tv] of a voice -> PersonaPlex's `.pt`, computed with `lm` (its embedding tables)."""
    from .prefill import embed_columns, prompt_columns

    frames = codes.shape[1]
    prompt = build_prompt(codes, [], "")
    columns = prompt_columns(prompt, lm)[:, :, : frames + 1]                         # [1, K, Tv + 1]
    with torch.no_grad():
        embeddings = embed_columns(lm, columns[:, :, : frames - 1])                 # [1, Tv - 1, dim]
    ring = 4
    cache = torch.full((1, columns.shape[1], ring), -2, dtype=torch.long)
    cache[0, :, (frames - 1) % ring] = columns[0, :, frames - 1].cpu()
    delayed = torch.tensor(lm.delays) > 0
    cache[0, delayed, frames % ring] = columns[0, delayed, frames].cpu()
    torch.save({"embeddings": embeddings[0, :, None, None, :].cpu(), "cache": cache}, path)
