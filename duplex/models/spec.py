"""Model specs: a preset name, a Hugging Face repo id, or a local directory in the hub layout.

Every spec resolves to a `moshi.models.loaders.CheckpointInfo`, so the tiny presets, local
directories and hub downloads all load through the very same moshi code afterwards.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from moshi.models import loaders

from . import legacy_layout, personaplex, tiny

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(os.environ.get("DUPLEX_WEIGHTS_DIR", Path(__file__).resolve().parents[2] / "weights"))


# The revision hibiki-zero's own CLI pins (kyutai-labs/hibiki-zero, hibiki_zero/run.py).
HIBIKI_ZERO_REVISION = "23b3e0b41782026c81dd5283a034107b01f9e513"


@dataclass(frozen=True)
class Preset:
    name: str
    duplex_spec: str      # HF repo id, or "tiny:<name>" for a generated tiny model
    description: str
    stt_spec: str = "kyutai/stt-1b-en_fr"
    tts_spec: str = "kyutai/tts-1.6b-en_fr"
    llm_spec: str = "HuggingFaceTB/SmolLM2-360M-Instruct"


PRESETS: dict[str, Preset] = {
    "moshiko": Preset("moshiko", "kyutai/moshiko-pytorch-bf16",
                      "Kyutai's Moshi 7B (male voice), bf16; cascade: Kyutai STT 1B, TTS 1.6B, SmolLM2 360M"),
    "moshika": Preset("moshika", "kyutai/moshika-pytorch-bf16",
                      "Kyutai's Moshi 7B (female voice), bf16; the same cascade"),
    "tiny": Preset("tiny", "tiny:moshi", "random-weight Moshi, STT, TTS and LLM of the real architectures, "
                   "generated locally", stt_spec="tiny:stt", tts_spec="tiny:tts", llm_spec="tiny"),
    "personaplex": Preset("personaplex", f"personaplex:{personaplex.REPO}",
                          "NVIDIA's PersonaPlex 7B (Moshi with persona prompts: --voices, config system_prompt/voice), "
                          "bf16; the same cascade as moshiko"),
    "hibiki-zero": Preset("hibiki-zero", f"kyutai/hibiki-zero-3b-pytorch-bf16@{HIBIKI_ZERO_REVISION}",
                          "Kyutai's Hibiki-Zero 3B: speech translation FR/ES/PT/DE -> EN (the text stream is the "
                          "English translation), bf16; the same cascade as moshiko"),
    "j-moshi": Preset("j-moshi", "nu-dialogue/j-moshi-ext",
                      "J-Moshi (Nagoya University): Moshi 7B for Japanese dialogue, repo without config.json, "
                      "bf16; the cascade stays English (moshiko's)"),
    "tiny-hibiki-zero": Preset("tiny-hibiki-zero", "tiny:hibiki-zero",
                               "random-weight Hibiki-Zero in its layout (16+16 codebooks, kv_repeat 2, rope_concat, "
                               "9 depformer weight sets); the tiny cascade",
                               stt_spec="tiny:stt", tts_spec="tiny:tts", llm_spec="tiny"),
    "tiny-jmoshi": Preset("tiny-jmoshi", "tiny:jmoshi",
                          "random-weight J-Moshi in its layout (no config.json, Japanese SentencePiece with byte "
                          "fallback); the tiny cascade", stt_spec="tiny:stt", tts_spec="tiny:tts", llm_spec="tiny"),
    "tiny-personaplex": Preset("tiny-personaplex", "tiny:personaplex",
                               "random-weight PersonaPlex (dep_q 16) in PersonaPlex's published layout, with tiny "
                               "voices; the tiny cascade", stt_spec="tiny:stt", tts_spec="tiny:tts", llm_spec="tiny"),
    "hibiki": Preset("hibiki", "kyutai/hibiki-2b-pytorch-bf16",
                     "Kyutai's Hibiki 2B (French -> English speech translation, guided: config cfg_coef, condition), "
                     "bf16; the text stream is the translation; the same cascade as moshiko"),
    "hibiki-1b": Preset("hibiki-1b", "kyutai/hibiki-1b-pytorch-bf16",
                        "Kyutai's Hibiki 1B (French -> English, 8 codebooks per side), bf16; the same cascade"),
    "tiny-hibiki": Preset("tiny-hibiki", "tiny:hibiki",
                          "random-weight Hibiki in Hibiki 2B's layout (dep_q 16, its conditioner, guided), generated "
                          "locally; the tiny cascade", stt_spec="tiny:stt", tts_spec="tiny:tts", llm_spec="tiny"),
}


class WeightsUnavailable(RuntimeError):
    """The weights of a spec cannot be found or downloaded; the message says what to do."""


def resolve_checkpoint(spec: str) -> loaders.CheckpointInfo:
    """Turns a spec (repo id, local dir, or tiny:<name>) into a CheckpointInfo with local paths."""
    if spec.startswith("tiny:"):
        name = spec.removeprefix("tiny:")
        generators = tiny.GENERATORS
        if name not in generators:
            raise WeightsUnavailable(f"no tiny preset {spec!r}; known: {', '.join('tiny:' + n for n in generators)}")
        return checkpoint_from_dir(generators[name](WEIGHTS_DIR / f"tiny-{name}"))
    if spec.startswith("personaplex:"):
        return checkpoint_from_dir(personaplex_directory(spec))
    if spec.startswith("random:"):   # real sizes, random weights built on the device (models/real_size.py)
        from . import real_size

        name = spec.removeprefix("random:")
        try:
            base = resolve_checkpoint(real_size.base_spec(name))
        except ValueError as exc:
            raise WeightsUnavailable(str(exc)) from None
        return real_size.random_checkpoint(name, base)
    path = Path(spec).expanduser()
    if path.is_dir():
        return checkpoint_from_dir(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise WeightsUnavailable(f"{spec!r} is not a model directory (expected config.json + safetensors + tokenizer)")
    return checkpoint_from_hub(spec)


def model_directory(spec: str) -> Path | None:
    """The local folder of a duplex spec's files (generated, downloaded or given), None for a moshi hub repo."""
    if spec.startswith("tiny:"):
        name = spec.removeprefix("tiny:")
        return tiny.GENERATORS[name](WEIGHTS_DIR / f"tiny-{name}") if name in tiny.GENERATORS else None
    if spec.startswith("personaplex:"):
        return personaplex_directory(spec)
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def personaplex_directory(spec: str) -> Path:
    """`personaplex:<repo id or directory>`: the folder of PersonaPlex's published files."""
    source = spec.removeprefix("personaplex:")
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub.utils import HfHubHTTPError

    log.info("fetching %s from the Hugging Face hub (cached under %s)", source, _hf_cache_dir())
    try:
        return personaplex.download(source)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsUnavailable(
            f"could not get {source!r} from the Hugging Face hub ({type(exc).__name__}: {exc}).\n"
            "  - PersonaPlex's weights are gated: accept its license on huggingface.co and set HF_TOKEN;\n"
            "  - or pass a local directory with its files (--moshi-spec personaplex:/path/to/dir);\n"
            "  - or try `--preset tiny-personaplex` (random weights generated locally, no download)."
        ) from exc


def checkpoint_from_dir(directory: Path) -> loaders.CheckpointInfo:
    """A local directory laid out like a hub repo: config.json naming its files, which sit beside it
    (or PersonaPlex's published layout, whose file names are fixed: models/personaplex.py; or a repo with
    no config.json at all, like J-Moshi's, read as moshi reads it: models/legacy_layout.py)."""
    if legacy_layout.is_legacy(directory, other_markers=(personaplex.VOICES_ARCHIVE,)):
        return legacy_layout.checkpoint_from_legacy(directory)   # J-Moshi's layout: moshi's 7B rules
    if (directory / personaplex.MIMI_FILE).exists():
        try:
            return personaplex.checkpoint_from_layout(directory)
        except personaplex.LayoutError as exc:
            raise WeightsUnavailable(str(exc)) from None
    config_path = directory / "config.json"
    if not config_path.exists():
        raise WeightsUnavailable(f"{directory} has no config.json; it must use the Hugging Face repo layout")
    config = json.loads(config_path.read_text())

    def local(key: str, default: str | None) -> Path | None:
        name = config.get(key, default)
        if name is None:
            return None
        file = directory / name
        if not file.exists():
            raise WeightsUnavailable(f"{directory}: config.json names {name!r} ({key}) but the file is missing")
        return file

    # Path objects pass through moshi's hf_get untouched, so nothing here reaches the network.
    return loaders.CheckpointInfo.from_hf_repo(
        str(directory),
        moshi_weights=local("moshi_name", loaders.MOSHI_NAME),
        mimi_weights=local("mimi_name", loaders.MIMI_NAME),
        tokenizer=local("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
        config_path=config_path,
        mimi_config_path=local("mimi_config_name", None),
        lora_weights=local("lora_name", None),
    )


def checkpoint_from_hub(spec: str) -> loaders.CheckpointInfo:
    """Downloads (with huggingface_hub's progress bars) into the HF cache, or reuses the cache.
    `owner/name@revision` pins a revision (a commit, branch or tag), as hibiki-zero's own CLI does."""
    from huggingface_hub.utils import HfHubHTTPError

    repo, _, revision = spec.partition("@")
    log.info("fetching %s from the Hugging Face hub (cached under %s)", spec, _hf_cache_dir())
    try:
        return loaders.CheckpointInfo.from_hf_repo(repo, revision=revision or None)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsUnavailable(
            f"could not get {spec!r} from the Hugging Face hub ({type(exc).__name__}: {exc}).\n"
            "  - check the network, or set HF_HUB_OFFLINE=1 to use what is already cached;\n"
            "  - or pass a local directory in the hub layout (--moshi-spec /path/to/dir);\n"
            "  - or try `--preset tiny` (random weights generated locally, no download)."
        ) from exc


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
