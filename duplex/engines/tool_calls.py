"""Tool calls inside an assistant turn: the calls of one LLM response assembled and announced, and the
results the turn waits for.

A tool call is a pause inside a cascade turn, not a new kind of turn (`cascade_turn.AssistantTurn`):
the LLM's response streams `ToolCallDelta`s beside its text; `CallAssembler` turns them into typed
engine frames as they come (`ToolCallStarted`, `ToolCallArguments`) and, when the response is over,
into complete `ToolCall`s (`ToolCallReady`, one per call). `Waiting` holds the results the turn waits
for, one future per call id, so that `EngineStream.tool_result` can hand one in from the session and
the turn can give up on them (timeout, cancel) in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from ..models.llm.base import ToolCall, ToolCallDelta, ToolChoice
from ..models.llm.tool_parse import new_call_id
from .base import EngineFailure, Sink, ToolCallArguments, ToolCallReady, ToolCallStarted

MAX_ROUNDS = 8   # LLM responses in one turn: past this many chained calls, the LLM is asked without tools
# The result a call gets when a new answer starts before the client gave one (`set_tool_wait(False)`: Realtime)
NO_RESULT = "error: no result was given before the conversation went on"


@dataclass(frozen=True)
class TurnTools:
    """What a turn may call and how it waits: the conversation's settings, or a response's overrides."""

    tools: tuple[dict, ...] = ()
    choice: ToolChoice | None = None      # "auto" | "none" | "required" | a function name
    timeout_s: float = 30.0               # the longest wait for a call's result
    wait: bool = True                     # True (/ws): the turn waits and goes on; False (Realtime): it ends at its calls

    def configured(self, config: dict) -> "TurnTools":
        """These settings with a conversation config's `tools`, `tool_choice`, `tool_timeout_s` applied."""
        changes: dict = {}
        if "tools" in config:
            changes["tools"] = tuple(config["tools"])
        if "tool_choice" in config:
            changes["choice"] = config["tool_choice"]
        if "tool_timeout_s" in config:
            changes["timeout_s"] = float(config["tool_timeout_s"])
        return dataclasses.replace(self, **changes)

    def offered(self, rounds: int) -> tuple[list[dict] | None, ToolChoice | None]:
        """The tools and choice of the `rounds`-th LLM response (a required or named call only once: the
        response after the result answers in words; past MAX_ROUNDS, no tools at all)."""
        if not self.tools or self.choice == "none" or rounds >= MAX_ROUNDS:
            return None, None
        return list(self.tools), (self.choice if rounds == 0 else "auto")


@dataclass
class _Partial:
    call_id: str
    name: str = ""
    arguments: str = ""
    announced: bool = False


@dataclass
class CallAssembler:
    """One LLM response's calls, from their deltas (by index), announced to `sink` as they come."""

    sink: Sink
    partial: dict[int, _Partial] = field(default_factory=dict)

    def add(self, delta: ToolCallDelta) -> None:
        call = self.partial.get(delta.index)
        if call is None:
            call = self.partial[delta.index] = _Partial(delta.call_id or new_call_id())
        if delta.name:
            call.name = delta.name
        if call.name and not call.announced:
            call.announced = True
            self.sink(ToolCallStarted(call.call_id, call.name))
            if call.arguments:          # pieces that came before the name
                self.sink(ToolCallArguments(call.call_id, call.arguments))
        call.arguments += delta.arguments
        if call.announced and delta.arguments:
            self.sink(ToolCallArguments(call.call_id, delta.arguments))

    def complete(self) -> list[ToolCall]:
        """The response is over: its calls in order, each announced `ToolCallReady`. A call without a name
        cannot be run: it is reported and left out."""
        calls = []
        for _, part in sorted(self.partial.items()):
            if not part.name:
                self.sink(EngineFailure("internal", "the language model made a tool call without a name; ignored"))
                continue
            call = ToolCall(part.call_id, part.name, part.arguments or "{}")
            calls.append(call)
            self.sink(ToolCallReady(call))
        self.partial.clear()
        return calls


class Waiting:
    """The results a turn waits for: one future per call id (event loop only)."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[str]] = {}

    def expect(self, calls: list[ToolCall]) -> None:
        loop = asyncio.get_running_loop()
        self.futures = {call.call_id: loop.create_future() for call in calls}

    def give(self, call_id: str, output: str) -> bool:
        """Hands in a result; False when no call with this id waits (unknown, answered, given up)."""
        future = self.futures.get(call_id)
        if future is None or future.done():
            return False
        future.set_result(output)
        return True

    async def results(self, timeout_s: float) -> dict[str, str]:
        """The results that came within `timeout_s` (all of them, unless the time ran out); after this
        nothing waits (a result that comes later finds no call)."""
        futures = list(self.futures.values())
        if futures:
            await asyncio.wait(futures, timeout=timeout_s)
        results = {call_id: future.result() for call_id, future in self.futures.items()
                   if future.done() and not future.cancelled()}
        self.clear()
        return results

    def unanswered(self) -> list[str]:
        return [call_id for call_id, future in self.futures.items() if not future.done()]

    def clear(self) -> None:
        for future in self.futures.values():
            future.cancel()
        self.futures = {}
