"""The cascade's LLM backends behind one interface (`base.LLMBackend`).

- `TransformersLLM` (`transformers_llm.py`): a causal LM in process (hub id, local directory, or `tiny`);
- `OpenAICompatibleLLM` (`openai_compatible.py`): any OpenAI-compatible streaming endpoint.
The tiny preset's writer is `duplex.models.tiny.llm`.
"""

from __future__ import annotations

import os

from .base import ChatMessage, LLMBackend, LLMError, TokenUsage
from .openai_compatible import OpenAICompatibleLLM
from .token_count import TokenCounter
from .transformers_llm import TransformersLLM

__all__ = ["ChatMessage", "LLMBackend", "LLMError", "OpenAICompatibleLLM", "TokenUsage", "TransformersLLM", "load_llm"]


def load_llm(spec_or_url: str, device: str = "cpu", *, model: str | None = None,
             api_key: str | None = None, seed: int | None = None, token_timeout: float = 10.0) -> LLMBackend:
    """"tiny" -> the tiny preset; http(s)://... -> an OpenAI-compatible endpoint (its key from
    $DUPLEX_LLM_API_KEY or $OPENAI_API_KEY, its model from `model` or $DUPLEX_LLM_MODEL); else a hub id
    or local directory. An endpoint's model whose tokenizer is on this machine counts the tokens of a response
    the server reports none for (docs/llm.md#token-usage). Loading a model blocks (call it at startup, or from a thread)."""
    if spec_or_url.startswith(("http://", "https://")):
        model = model or os.environ.get("DUPLEX_LLM_MODEL")
        return OpenAICompatibleLLM(
            spec_or_url, model=model, token_timeout=token_timeout, counter=TokenCounter.load(model),
            api_key=api_key or os.environ.get("DUPLEX_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY"),
        )
    return TransformersLLM.from_spec(spec_or_url, device=device, seed=seed)
