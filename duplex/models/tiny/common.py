"""What every tiny preset shares: the staged, locked writer, the sentencepiece tokenizer and the tiny Mimi.

Tiny presets are random-weight models of the real architectures, written in the hub layout, once,
deterministically from a seed, into `weights/`, then loaded by the same loader as real checkpoints
(config.json + safetensors + sentencepiece tokenizer). They babble, but they exercise every line of
the real path on a small CPU in real time.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import random
import shutil
import tempfile
import typing as tp
from pathlib import Path

import torch
from safetensors.torch import save_file

if tp.TYPE_CHECKING:
    from moshi.models.compression import MimiModel

log = logging.getLogger(__name__)

TEXT_VOCAB = 512

# Mimi, shrunk: the same SEANet/transformer/split-RVQ classes and strides (24 kHz -> 12.5 Hz),
# fewer channels and layers. The bins stay 2048 so the LM card matches the real one.
TINY_MIMI_CONFIG: dict[str, tp.Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1, "dimension": 32, "causal": True, "n_filters": 4, "n_residual_layers": 1,
        "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
        "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
        "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
    },
    "quantizer": {"dimension": 16, "n_q": 8, "bins": 2048, "input_dimension": 32, "output_dimension": 32},
    "transformer": {
        "d_model": 32, "num_heads": 2, "num_layers": 1, "causal": True, "layer_scale": 0.01,
        "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
        "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 64,
        "input_dimension": 32, "output_dimensions": [32],
    },
}

MIMI_FILE = "mimi.safetensors"
MIMI_CONFIG_FILE = "mimi_config.json"
TOKENIZER_FILE = "tokenizer.model"

WORDS = (
    "hello how are you today i am fine thank you what would you like to talk about the weather is nice "
    "let us speak about music books science travel food and friends can you hear me yes i can hear you "
    "very well this is a test of a full duplex speech model that listens and speaks at the same time "
    "please tell me more about your day it was good we went to the park and saw birds trees flowers "
    "one two three four five six seven eight nine ten morning evening night coffee tea water bread"
).split()


def ensure_generated(directory: Path, stamp: dict, write: tp.Callable[[Path], None], what: str) -> Path:
    """Returns `directory`, first filling it with `write(staging)` unless its tiny.json equals `stamp`.

    Test workers, a server and a bench may race here: one writes under a file lock, the others wait;
    the files appear at once (a staging folder renamed into place), never half written."""
    stamp_file = directory / "tiny.json"

    def fresh() -> bool:
        try:
            return json.loads(stamp_file.read_text()) == stamp
        except (FileNotFoundError, json.JSONDecodeError):   # absent, or another process is replacing it
            return False

    if fresh():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(directory.parent / f".{directory.name}.lock"):
        if fresh():
            return directory
        log.info("generating %s (%s) in %s", what, stamp, directory)
        with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
            staging = Path(tmp) / "model"
            staging.mkdir()
            write(staging)
            (staging / "tiny.json").write_text(json.dumps(stamp))
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
    return directory


def write_tokenizer_and_mimi(directory: Path, seed: int, mimi_config: dict,
                             tokenizer: bytes | None = None) -> tuple[int, MimiModel]:
    """Writes the tokenizer (`tokenizer`, or the English one trained here), a tiny Mimi and its config
    (shared by every tiny Kyutai preset); returns the tokenizer's real vocabulary size (which must be
    the LM's text card) and the Mimi."""
    import sentencepiece as spm
    from moshi.models import loaders

    if tokenizer is None:
        tokenizer = train_tokenizer(seed, TEXT_VOCAB)
    (directory / TOKENIZER_FILE).write_bytes(tokenizer)
    # The corpus is small, so the vocabulary may come out smaller than asked: the LM's text card
    # must match what the tokenizer really has, or the model could sample ids it cannot decode.
    text_card = spm.SentencePieceProcessor(model_proto=tokenizer).vocab_size()
    (directory / MIMI_CONFIG_FILE).write_text(json.dumps(mimi_config, indent=2))
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, mimi_config, device="cpu")
    _randomize_codebooks(mimi)
    _shape_decoder_output(mimi)
    save_file(contiguous(mimi.state_dict()), str(directory / MIMI_FILE))
    return text_card, mimi


def _randomize_codebooks(mimi: MimiModel) -> None:
    """Mimi's codebooks start at zero (training fills them by EMA): every code would decode alike.
    Random unit-variance codebooks, marked initialised, make codes carry the audio both ways."""
    from moshi.quantization.core_vq import EuclideanCodebook

    for module in mimi.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.normal_(0.0, 1.0)
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)


def _shape_decoder_output(mimi: MimiModel, target_rms: float = 0.1) -> None:
    """A random decoder's biases add a loud constant offset that hides what the codes say. Zero them
    and scale the last convolution so code-driven babble comes out at about -20 dBFS."""
    convs = [m for m in mimi.decoder.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    with torch.no_grad():
        for conv in convs:
            if conv.bias is not None:
                conv.bias.zero_()
        codes = torch.randint(0, 2048, (1, 8, 25), generator=torch.Generator().manual_seed(0))
        rms = mimi.decode(codes).pow(2).mean().sqrt().item()
        convs[-1].weight.mul_(target_rms / max(rms, 1e-8))


def train_tokenizer(seed: int, vocab_size: int, sentences: list[str] | None = None, **options: tp.Any) -> bytes:
    """A sentencepiece model with Moshi's special ids (0 unk, 1 bos, 2 eos, 3 pad), deterministic; trained
    on `sentences` (default: random English word strings), with extra trainer `options`."""
    import sentencepiece as spm

    rng = random.Random(seed)
    if sentences is None:
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(4000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1,
        hard_vocab_limit=False, minloglevel=2, seed_sentencepiece_size=100000,
        shuffle_input_sentence=False, **options,
    )
    return model.getvalue()


def contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
