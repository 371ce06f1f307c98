"""The LLM stage's contract: a chat model that streams text deltas and stops when told.

Interruption is the point of the interface: setting `cancel` (or closing the async generator) stops
the underlying generation within about one token, so a barge-in frees the model at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator, Protocol


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


class LLMError(RuntimeError):
    """A turn's generation failed (endpoint down, HTTP error, stall, garbage, model failure).
    The session turns it into an `error` event and goes on; the message says what happened."""


class LLMBackend(Protocol):
    name: str

    def stream(self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
               cancel: asyncio.Event, seed: int | None = None) -> AsyncIterator[str]:
        """Yields text deltas of the assistant's answer; returns early once `cancel` is set."""
        ...

    async def close(self) -> None:
        """Frees what the backend holds (an HTTP session, a model thread); called once, at shutdown."""
        ...
