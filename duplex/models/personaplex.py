"""PersonaPlex checkpoints (NVIDIA's `nvidia/personaplex-7b-v1`): its published layout, loaded as moshi.

PersonaPlex is Moshi's architecture whose depformer also predicts the user's stream (dep_q 16), with a
persona given as a prompt (models/persona.py). Its hub repo has no moshi-style config naming its files:
PersonaPlex's loader uses fixed file names and fixed architecture constants. This module knows them and
turns such a directory (or the hub repo, downloaded) into a moshi `CheckpointInfo`, so the model loads
through moshi 0.2.13's own `get_moshi_lm` (whose state-dict hook reads PersonaPlex's stacked
`in_proj_weight` / `out_proj.weight` names) and runs in the same batched engine as Moshi.

A directory whose config.json carries the LM's keys (`dim`, `dep_q`, ...) uses those instead of the 7B
constants: that is how the tiny preset (tiny/personaplex.py) is written, in the same layout.
"""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
from pathlib import Path

from moshi.models import loaders

log = logging.getLogger(__name__)

REPO = "nvidia/personaplex-7b-v1"
LM_FILE = "model.safetensors"
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
VOICES_ARCHIVE = "voices.tgz"
CONFIG_FILE = "config.json"
MIMI_CONFIG_FILE = "mimi_config.json"   # tiny layouts only: the real one uses moshi's default Mimi
FILES = (LM_FILE, MIMI_FILE, TOKENIZER_FILE, VOICES_ARCHIVE)

# PersonaPlex's LM: moshi's 7B with a depformer over both speakers' 16 codebooks.
LM_CONFIG: dict = dict(loaders._lm_kwargs, dep_q=16)


class LayoutError(RuntimeError):
    """A directory or repo is not in PersonaPlex's layout; the message says what is missing."""


def checkpoint_from_layout(directory: Path) -> loaders.CheckpointInfo:
    """A local directory holding PersonaPlex's published files."""
    missing = [name for name in (LM_FILE, MIMI_FILE, TOKENIZER_FILE) if not (directory / name).exists()]
    if missing:
        raise LayoutError(f"{directory} is not in PersonaPlex's layout: missing {', '.join(missing)} "
                          f"(expected {', '.join(FILES)})")
    config: dict = {}
    if (directory / CONFIG_FILE).exists():
        config = json.loads((directory / CONFIG_FILE).read_text())
    lm_config = {k: v for k, v in config.items() if k in LM_CONFIG} if "dim" in config else dict(LM_CONFIG)
    mimi_config = None
    if (directory / MIMI_CONFIG_FILE).exists():
        mimi_config = json.loads((directory / MIMI_CONFIG_FILE).read_text())
    return loaders.CheckpointInfo(
        moshi_weights=directory / LM_FILE, mimi_weights=directory / MIMI_FILE,
        tokenizer=directory / TOKENIZER_FILE, lm_config=lm_config, raw_config=config,
        mimi_config=mimi_config, model_type="moshi",
    )


def download(repo: str = REPO) -> Path:
    """Fetches PersonaPlex's files from the hub (huggingface_hub's progress bars, its cache); their folder."""
    from huggingface_hub import hf_hub_download

    paths = [Path(hf_hub_download(repo, name)) for name in FILES]
    return paths[0].parent


def voices_dir(directory: Path) -> Path | None:
    """The folder of voice prompts of a layout: `voices/` beside `voices.tgz`, unpacked once."""
    target = directory / "voices"
    archive = directory / VOICES_ARCHIVE
    if target.is_dir():
        return target
    if not archive.exists():
        return None
    log.info("unpacking %s", archive)
    with tempfile.TemporaryDirectory(dir=directory) as staging:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")    # "data": no links out, no absolute paths
        unpacked = Path(staging) / "voices"
        if not unpacked.is_dir():
            raise LayoutError(f"{archive} has no voices/ folder")
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():   # else another process unpacked it first
                raise
    return target
