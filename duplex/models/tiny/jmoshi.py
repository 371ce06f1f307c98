"""The tiny J-Moshi preset: a random-weight Moshi in the layout of `nu-dialogue/j-moshi-ext`, Japanese tokenizer.

J-Moshi is Moshi 7B (from `kyutai/moshiko-pytorch-bf16`) trained further on Japanese dialogue. Its repo
has no config.json: three files under moshi's fixed names, which moshi reads as a Moshi 7B
(models/legacy_layout.py). Its text tokenizer is a Japanese SentencePiece model (rinna's, 32k pieces,
with byte fallback; text padding id 3, end of padding 0 as in Moshi's).

The tiny layout has the same three files and no config.json; the shrunk LM and Mimi sizes, which the
real repo takes from moshi's defaults, are in `tiny_lm_config.json` and `mimi_config.json`. The tokenizer
is trained here on a few Japanese sentences (no spaces between words, byte fallback on), so the text
stream carries Japanese pieces and byte pieces like the real one's.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
from moshi.models import loaders
from safetensors.torch import save_file

from ..legacy_layout import TINY_LM_CONFIG_FILE
from .common import MIMI_FILE, TINY_MIMI_CONFIG, TOKENIZER_FILE, contiguous, ensure_generated, train_tokenizer
from .common import write_tokenizer_and_mimi
from .moshi import TINY_LM_CONFIG

log = logging.getLogger(__name__)

TINY_SEED = 42
FORMAT_VERSION = 1  # bump when the tiny architecture or layout changes, so stale files are regenerated
VOCAB = 600         # asked; a small corpus gives fewer (the 256 byte pieces are always there)

# Everyday dialogue phrases (written for this preset); sentences are random runs of them, unspaced.
PHRASES = (
    "こんにちは", "こんばんは", "おはようございます", "ありがとうございます", "すみません", "はい", "いいえ",
    "そうですね", "なるほど", "本当ですか", "今日はいい天気ですね", "明日は雨が降るそうです",
    "週末は何をしましたか", "公園を散歩しました", "駅の近くに新しい店ができました", "ラーメンが好きです",
    "コーヒーを飲みませんか", "仕事はどうですか", "少し忙しいです", "旅行に行きたいです", "京都はきれいでした",
    "電車で行きます", "何時に会いましょうか", "三時はどうですか", "大丈夫です", "よろしくお願いします",
    "もう一度言ってください", "聞こえますか", "よく聞こえます", "音楽を聞くのが好きです", "本を読みました",
    "友達と映画を見ました", "日本語を勉強しています", "ちょっと待ってください", "それはいいですね", "またね",
)


def japanese_sentences(seed: int, count: int = 3000) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PHRASES) + rng.choice(("", "、", "。")) for _ in range(rng.randint(1, 5)))
            for _ in range(count)]


def japanese_tokenizer(seed: int) -> bytes:
    return train_tokenizer(seed, VOCAB, japanese_sentences(seed), byte_fallback=True, character_coverage=0.9995)


def ensure_tiny_jmoshi(directory: Path, seed: int = TINY_SEED) -> Path:
    """Returns `directory`, generating the tiny J-Moshi checkpoint there first if it is missing."""
    return ensure_generated(directory, {"format": FORMAT_VERSION, "seed": seed},
                            lambda staging: write_tiny_jmoshi(staging, seed), "tiny J-Moshi weights")


def write_tiny_jmoshi(directory: Path, seed: int) -> None:
    text_card, _ = write_tokenizer_and_mimi(directory, seed, TINY_MIMI_CONFIG, japanese_tokenizer(seed))
    (directory / TOKENIZER_FILE).rename(directory / loaders.TEXT_TOKENIZER_NAME)
    (directory / MIMI_FILE).rename(directory / loaders.MIMI_NAME)

    torch.manual_seed(seed + 4)
    lm_config = dict(TINY_LM_CONFIG, text_card=text_card)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    save_file(contiguous(lm.state_dict()), str(directory / loaders.MOSHI_NAME))
    (directory / TINY_LM_CONFIG_FILE).write_text(json.dumps(lm_config, indent=2))
