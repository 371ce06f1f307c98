"""The tiny LLM preset: a random-weight Qwen2 and a locally trained tokenizer, in the hub layout.

Written once, deterministically from a seed, with `save_pretrained`, then loaded by the very same
`from_pretrained` path as a real model. It babbles, but it exercises the whole LLM stage on a small
CPU with nothing from the hub. Same stamp + file-lock pattern as the tiny Moshi (`common.py`).
"""

from __future__ import annotations

import logging
import random
import string
from pathlib import Path

import torch

from .common import WORDS, ensure_generated

log = logging.getLogger(__name__)

TINY_LLM_SEED = 42
TINY_LLM_FORMAT = 3  # bump when the tiny architecture or tokenizer changes, so stale files are regenerated
TINY_LLM_VOCAB = 512

# ChatML, as Qwen2.5 and SmolLM2 use it, with Qwen2.5's tool rendering: the tools block at the end of the
# system prompt, the assistant's calls as `<tool_call>` JSON, results as user turns in `<tool_response>`.
# Without tools it renders exactly plain ChatML. The tiny preset renders prompts the way real models do.
CHATML_TEMPLATE = (
    "{% if tools and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.' + tools_block + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if loop.first and message['role'] == 'system' and tools %}{{ tools_block }}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{ call['function']['arguments'] | tojson }}{{ '}\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# `tools_block` (Qwen2.5's wording), set at the top of the template so both places above can use it.
_TOOLS_BLOCK = (
    "{% set tools_block %}"
    "{{ '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'"
    " + 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}"
    "{% for tool in tools or [] %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments within '"
    " + '<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": '"
    " + '<args-json-object>}\n</tool_call>' }}"
    "{% endset %}"
)
CHATML_TEMPLATE = _TOOLS_BLOCK + CHATML_TEMPLATE
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Byte-level BPE writes space and newline as these two characters.
_TINY_ALPHABET = string.ascii_letters + string.digits + ".,?!'-:;" + "\u0120\u010a"


def ensure_tiny_llm(directory: Path, seed: int = TINY_LLM_SEED) -> Path:
    """Returns `directory`, generating the tiny LLM there first if it is missing or stale."""
    return ensure_generated(directory, {"format": TINY_LLM_FORMAT, "seed": seed},
                            lambda staging: write_tiny_llm(staging, seed), "the tiny LLM")


def write_tiny_llm(directory: Path, seed: int) -> None:
    """A random Qwen2 (hidden 64, 2 layers) and a locally trained byte-level BPE with ChatML."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(seed)
    tokenizer.save_pretrained(directory)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    assert model.generation_config is not None
    model.generation_config.eos_token_id = im_end
    model.save_pretrained(directory, safe_serialization=True)


def build_tiny_tokenizer(seed: int):
    """Byte-level BPE trained on a seeded corpus, nothing from the hub. Its alphabet is printable
    ASCII (not all 256 bytes), so the random model babbles word pieces, never control bytes or
    broken UTF-8; other characters are dropped when encoding (fine for a babbling model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".?!,")
              for _ in range(4000)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_LLM_VOCAB, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=list(_TINY_ALPHABET),
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
    )
