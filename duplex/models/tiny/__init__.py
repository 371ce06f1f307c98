"""Tiny presets: random-weight models of the real architectures (Moshi, STT, TTS, LLM), generated locally.

One module per preset; `common` holds what they share. `GENERATORS` maps a `tiny:<name>` spec to the
function that writes (once) and returns its directory.
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

from .hibiki import ensure_tiny_hibiki
from .hibiki_zero import ensure_tiny_hibiki_zero
from .jmoshi import ensure_tiny_jmoshi
from .moshi import ensure_tiny_moshi
from .personaplex import ensure_tiny_personaplex
from .stt import ensure_tiny_stt
from .tts import ensure_tiny_tts

GENERATORS: dict[str, tp.Callable[[Path], Path]] = {
    "moshi": ensure_tiny_moshi, "stt": ensure_tiny_stt, "tts": ensure_tiny_tts,
    "personaplex": ensure_tiny_personaplex, "hibiki": ensure_tiny_hibiki,
    "hibiki-zero": ensure_tiny_hibiki_zero, "jmoshi": ensure_tiny_jmoshi,
}
