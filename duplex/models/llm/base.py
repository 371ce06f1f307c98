"""The LLM stage's contract: a chat model that streams text deltas (and tool calls) and stops when told.

Interruption is the point of the interface: setting `cancel` (or closing the async generator) stops
the underlying generation within about one token, so a barge-in frees the model at once.

Function calling (docs/llm.md): a turn may offer `tools` (OpenAI chat-completions function tools) and a
`tool_choice`; the stream then yields `ToolCallDelta`s beside the text deltas, in the shape of the
OpenAI streaming format (an `index` per call; its id and name once, its arguments as they arrive). A call
is complete when the stream ends. The history carries calls and results as typed items in the OpenAI
message shapes: an assistant `ChatMessage` with `tool_calls`, then a `tool` message with `tool_call_id`.

Token usage: a caller that passes `usage` (a `TokenUsage`) gets the response's prompt and generated token
counts added to it when the response ends, so one object passed to each LLM call of an answer sums them
(the Realtime `usage` of `response.done`, the `/ws` turn `metrics`). See docs/llm.md for how each backend
counts.
"""

from __future__ import annotations

import asyncio
import typing as tp
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

ToolChoice = tp.Union[str, dict]   # "auto" | "none" | "required" | a function name | OpenAI's {"type": "function", ...}


@dataclass(frozen=True)
class ToolCall:
    """A complete function call of the assistant: an item of the history, never a string in a prompt."""

    call_id: str
    name: str
    arguments: str                 # JSON text, as the model wrote it (a JSON object for a valid call)

    def to_openai(self) -> dict:
        return {"id": self.call_id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the `index`-th call of a response: `call_id` and `name` come with its first piece,
    `arguments` is the next stretch of its JSON text (possibly empty)."""

    index: int
    call_id: str | None = None
    name: str | None = None
    arguments: str = ""


LLMDelta = tp.Union[str, ToolCallDelta]


@dataclass
class ChatMessage:
    role: str                                  # "system" | "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()      # assistant: the calls it made (content: what it said before)
    tool_call_id: str | None = None            # tool: the call this is the result of

    def to_openai(self) -> dict:
        """The chat-completions message shape (what an endpoint and a chat template read)."""
        message: dict[str, tp.Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def tool_choice_name(choice: ToolChoice | None) -> str | None:
    """The one function a `tool_choice` forces, if it names one (a plain name or OpenAI's object form)."""
    if isinstance(choice, dict):
        function = choice.get("function")
        name = (function if isinstance(function, dict) else choice).get("name")
        return name if isinstance(name, str) else None
    if choice in (None, "auto", "none", "required"):
        return None
    return choice


def tool_choice_wire(choice: ToolChoice | None) -> ToolChoice | None:
    """A `tool_choice` as the chat-completions API takes it (a bare name becomes the object form)."""
    name = tool_choice_name(choice)
    return {"type": "function", "function": {"name": name}} if name is not None else choice


@dataclass
class TokenUsage:
    """Tokens the LLM read and wrote, summed over the responses it was passed to (an answer with tool calls
    is several LLM responses). `responses` counts them; a backend adds once per response, at its end."""

    input_tokens: int = 0       # prompt tokens (the whole history, tools and system prompt), per response
    output_tokens: int = 0      # tokens generated
    responses: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.responses += 1


class LLMError(RuntimeError):
    """A turn's generation failed (endpoint down, HTTP error, stall, garbage, model failure).
    The session turns it into an `error` event and goes on; the message says what happened."""


class LLMBackend(Protocol):
    name: str

    def stream(self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
               cancel: asyncio.Event, seed: int | None = None, tools: list[dict] | None = None,
               tool_choice: ToolChoice | None = None, usage: TokenUsage | None = None,
               top_k: int | None = None) -> AsyncIterator[LLMDelta]:
        """Yields text deltas (str) of the assistant's answer and, when `tools` are offered, `ToolCallDelta`s;
        returns early once `cancel` is set. Without `tools` (or with `tool_choice` "none") only text.
        `top_k`: sample among the k likeliest tokens only (None: the whole distribution; no effect when greedy).
        At the end of the response (however it ends) its token counts are added to `usage`, if given."""
        ...

    async def close(self) -> None:
        """Frees what the backend holds (an HTTP session, a model thread); called once, at shutdown."""
        ...
