"""Counting an endpoint's tokens here, for a server that reports none (docs/llm.md#token-usage).

An OpenAI-compatible server says how many tokens a response took in its `usage` (asked with
`stream_options.include_usage`). One that does not (an older server, a proxy that drops the last chunk, a
response cut before its end) leaves the count to us: when the tokenizer of the served model is on this
machine already (the `--llm-model` name as a local directory or in the Hugging Face cache; nothing is
downloaded for it), `TokenCounter` counts the prompt through the model's chat template and the text and
call arguments that came back. Without it the count is 0, never a guess from characters.
"""

from __future__ import annotations

import logging
import typing as tp

log = logging.getLogger(__name__)


class TokenCounter:
    """A model's tokenizer, used only to count tokens (the endpoint's model, read from local files)."""

    def __init__(self, tokenizer: tp.Any, name: str):
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, model: str | None) -> "TokenCounter | None":
        """The tokenizer of `model` if this machine has it (a directory, or the HF cache); else None."""
        if not model:
            return None
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError) as exc:   # not cached, not a model name: the counts stay the server's or 0
            log.info("no local tokenizer for %s (%s): token counts come from the server's usage only",
                     model, type(exc).__name__)
            return None
        return cls(tokenizer, model)

    def prompt(self, messages: list[dict], tools: list[dict] | None) -> int:
        """Tokens of the prompt as the model's chat template renders it (its contents alone without one)."""
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                          add_generation_prompt=True)
                return self.text(tp.cast(str, text))
            except Exception:  # noqa: BLE001 - a template that rejects this history: count its contents instead
                log.debug("chat template of %s failed; counting message contents", self.name, exc_info=True)
        return sum(self.text(str(m.get("content") or "")) for m in messages)

    def text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
