"""Persona prompts (PersonaPlex): the frames stepped through the model before a conversation starts.

A persona is a voice prompt (a few seconds of someone speaking, which the model takes as its own voice)
and a role prompt (text between `<system>` tags). PersonaPlex feeds them as forced frames, in order:

  voice prompt     Tv frames: the voice's Mimi codes as the model's own audio, pad text, a sine as the user
  silence          6 frames (0.5 s): silence codes as the model's audio, pad text, sine as the user
  role prompt      one frame per text token: the token as the model's text, silence, sine
  silence          6 frames

Every token of these frames is known before the conversation starts, which is what lets the engine
fill a slot with them in a few parallel passes instead of one step per frame (models/prefill.py).

`VoiceLibrary` serves a folder of voice prompts (`--voices`): WAV files (any sample rate, encoded once
through Mimi) and PersonaPlex's precomputed `.pt` voices (models/voice_embeddings.py), by name with or
without extension; a name that is not a plain file name of that folder is refused.
"""

from __future__ import annotations

import hashlib
import threading
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import FRAME_SAMPLES, read_wav_mono24k

SYSTEM_TAG = "<system>"
SILENCE_FRAMES = 6            # 0.5 s at 12.5 Hz, after the voice prompt and after the role prompt
PROMPT_TEXT_PAD = 3           # the text token of frames without prompt text (PersonaPlex's "zero text code")
VOICE_LEVEL_DBFS = -24.0      # voice prompts are brought to this RMS level before encoding
# Mimi's codes for silence and for a 440 Hz sine (PersonaPlex's constants, for the published Mimi):
# the model's audio between prompts, and the user's audio throughout the prompt.
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
VOICE_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


class PersonaError(ValueError):
    """A persona request the server cannot honour (unknown voice, bad name, prompt too long)."""


def wrap_system_tags(text: str) -> str:
    """The role prompt as PersonaPlex's model expects it: `<system> ... <system>` (added when missing)."""
    cleaned = text.strip()
    if cleaned.startswith(SYSTEM_TAG) and cleaned.endswith(SYSTEM_TAG) and len(cleaned) > len(SYSTEM_TAG):
        return cleaned
    return f"{SYSTEM_TAG} {cleaned} {SYSTEM_TAG}"


@dataclass(frozen=True)
class PersonaPrompt:
    """The forced frames of a persona: frame p (0-based) is (text[p], agent[p], user[p])."""

    text: torch.Tensor     # [P] long
    agent: torch.Tensor    # [P, 8] long: the model's own audio codes
    user: torch.Tensor     # [P, 8] long: the user's audio codes (the sine)
    key: str               # hash of voice and text: the prefix cache's key
    embeddings: torch.Tensor | None = None   # [E, dim]: the first E columns given as transformer inputs (.pt voices)

    @property
    def frames(self) -> int:
        return int(self.text.shape[0])

    def frame(self, p: int) -> torch.Tensor:
        """[1 + 8 + 8] tokens of frame p: text, the model's audio, the user's audio."""
        return torch.cat([self.text[p: p + 1], self.agent[p], self.user[p]])


def build_prompt(voice_codes: torch.Tensor | None, text_tokens: list[int], voice_id: str,
                 embeddings: torch.Tensor | None = None) -> PersonaPrompt:
    """voice_codes [8, Tv] (None: no voice prompt); text_tokens: the tokenized, tagged role prompt;
    embeddings [Tv - 1, dim]: a precomputed voice's first columns (models/voice_embeddings.py)."""
    silence = torch.tensor(SILENCE_TOKENS, dtype=torch.long)
    sine = torch.tensor(SINE_TOKENS, dtype=torch.long)
    texts: list[int] = []
    agents: list[torch.Tensor] = []
    if voice_codes is not None:
        for t in range(voice_codes.shape[1]):
            texts.append(PROMPT_TEXT_PAD)
            agents.append(voice_codes[:, t].long().cpu())
    for token in [PROMPT_TEXT_PAD] * SILENCE_FRAMES + list(text_tokens) + [PROMPT_TEXT_PAD] * SILENCE_FRAMES:
        texts.append(token)
        agents.append(silence)
    agent = torch.stack(agents)
    digest = hashlib.sha256()
    digest.update(voice_id.encode())
    digest.update(b"\0" + np.asarray(text_tokens, dtype=np.int64).tobytes())
    if voice_codes is not None:
        digest.update(voice_codes.long().cpu().numpy().tobytes())
    if embeddings is not None:
        digest.update(embeddings.float().cpu().numpy().tobytes())
    return PersonaPrompt(torch.tensor(texts, dtype=torch.long), agent, sine.expand_as(agent).clone(),
                         digest.hexdigest()[:24], embeddings)


@dataclass(frozen=True)
class VoiceEmbeddings:
    """A PersonaPlex `.pt` voice (models/voice_embeddings.py describes the format)."""

    embeddings: torch.Tensor   # [E, dim]: the prompt's first E columns, as transformer inputs
    codes: torch.Tensor        # [8, E + 1]: the voice's codes where the cache holds them (zeros elsewhere)


def read_voice(path: Path) -> VoiceEmbeddings:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        embeddings, cache = state["embeddings"], state["cache"]
    except Exception as exc:   # a bad or foreign file: say which
        raise PersonaError(f"voice {path.name}: not a PersonaPlex voice embedding file ({exc})") from None
    frames = embeddings.shape[0] + 1                                 # Tv
    if embeddings.dim() != 4 or cache.dim() != 3 or cache.shape[1] < 9 or frames < 2:
        raise PersonaError(f"voice {path.name}: unexpected shapes {tuple(embeddings.shape)}, {tuple(cache.shape)}")
    ring = cache.shape[2]
    codes = torch.zeros(8, frames, dtype=torch.long)
    last, after = cache[0, :, (frames - 1) % ring].long(), cache[0, :, frames % ring].long()
    codes[0, frames - 1] = last[1]                 # codebook 0 of the last voice frame: column Tv - 1
    codes[1:, frames - 1] = after[2:9]             # its delayed codebooks: column Tv
    codes[1:, frames - 2] = last[2:9]              # the frame before's delayed codebooks: column Tv - 1
    return VoiceEmbeddings(embeddings.reshape(embeddings.shape[0], -1).float(), codes)


class VoiceLibrary:
    """A folder of voice prompts, encoded to Mimi codes on first use (then kept)."""

    def __init__(self, directory: Path, encode: tp.Callable[[np.ndarray], torch.Tensor]):
        """`encode`: pcm [N] float32 at 24 kHz -> codes [8, N / 1920] (runs on the model thread)."""
        self.directory = directory.resolve()
        self.encode = encode
        # Listed once (no disk access on the event loop later); links that lead out of the folder are left out.
        self._files = {p.name for p in self.directory.iterdir()
                       if p.is_file() and p.resolve().parent == self.directory}
        self._codes: dict[str, torch.Tensor] = {}
        self._embedded: dict[str, VoiceEmbeddings] = {}     # .pt voices, read once
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(name for name in self._files if Path(name).suffix.lower() in VOICE_SUFFIXES + (".pt",))

    def path(self, name: str) -> Path:
        """The file of a voice name (`NATF2`, `NATF2.wav`, `NATF2.pt`: PersonaPlex's precomputed voice, or when
        there is none an audio file of the same stem). Refuses names that leave the folder."""
        if not name or name != Path(name).name or name in (".", "..") or "\\" in name or "\0" in name:
            raise PersonaError(f"voice {name!r} is not a plain file name of the server's voices folder")
        candidates = [name] if Path(name).suffix.lower() in VOICE_SUFFIXES + (".pt",) else []
        stem = Path(name).stem if Path(name).suffix.lower() in VOICE_SUFFIXES + (".pt",) else name
        candidates += [stem + suffix for suffix in VOICE_SUFFIXES + (".pt",)]
        for candidate in candidates:
            if candidate in self._files:
                return self.directory / candidate
        shown = ", ".join(self.names()[:20]) or "none"
        raise PersonaError(f"unknown voice {name!r}; voices: {shown}")

    def codes(self, name: str) -> tuple[str, torch.Tensor]:
        """(the voice's file name, its codes [8, Tv]). Model thread: the first use encodes it."""
        file, codes, _ = self.voice(name)
        return file, codes

    def voice(self, name: str) -> tuple[str, torch.Tensor, torch.Tensor | None]:
        """(file name, codes [8, Tv], embeddings [Tv - 1, dim] or None): a WAV is encoded on first use, a
        PersonaPlex `.pt` read (models/voice_embeddings.py). Model thread."""
        path = self.path(name)
        if path.suffix == ".pt":
            with self._lock:
                if path.name not in self._embedded:
                    self._embedded[path.name] = read_voice(path)
                found = self._embedded[path.name]
            return path.name, found.codes, found.embeddings
        with self._lock:
            if path.name not in self._codes:
                pcm = read_wav_mono24k(str(path))
                pcm = _at_level(pcm, VOICE_LEVEL_DBFS)
                pad = (-len(pcm)) % FRAME_SAMPLES
                self._codes[path.name] = self.encode(np.pad(pcm, (0, pad)).astype(np.float32))
            return path.name, self._codes[path.name], None


def _at_level(pcm: np.ndarray, level_dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if pcm.size else 0.0
    if rms < 1e-6:
        return pcm
    return (pcm * (10 ** (level_dbfs / 20.0) / rms)).clip(-1.0, 1.0)
