"""Where the TTS's voices come from: a local folder, the hub's voices repo (fetched once at start), and the
name of the voices repo a checkpoint asks for. Used by `tts.TtsEngineModel` at start only: nothing here runs
because of a client's message."""

from __future__ import annotations

import logging
from pathlib import Path

from moshi.models import loaders
from moshi.models.tts import DEFAULT_DSM_TTS_VOICE_REPO

log = logging.getLogger(__name__)


def hub_voices(repo: str, suffix: str) -> Path | None:
    """The voice embeddings of a hub repo (`kyutai/tts-voices`), fetched once at start (cached); None when they
    cannot be had (offline without a cached copy): then only `--voice` is offered."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=[f"*{suffix}"]))
    except Exception as exc:  # network, auth, offline: the server still serves its default voice
        log.warning("the voices of %s could not be listed (%s: %s); only --voice is offered", repo,
                    type(exc).__name__, exc)
        return None


def shown(names: list[str], most: int = 40) -> str:
    """A refusal names the choices (the hub's voices repo has hundreds: the first `most`, and the count)."""
    if len(names) <= most:
        return ", ".join(names) or "none"
    return ", ".join(names[:most]) + f", ... ({len(names)} in all)"


def voice_repo_of(checkpoint: loaders.CheckpointInfo) -> str:
    """`tts_config.voice_repo` (a folder beside the weights: the tiny preset) or Kyutai's voices repo."""
    local = checkpoint.tts_config.get("voice_repo")
    if local:
        return str(Path(checkpoint.moshi_weights).parent / local)
    return DEFAULT_DSM_TTS_VOICE_REPO
