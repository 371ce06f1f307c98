"""Function calling on `/v1/realtime` (docs/realtime.md#function-calling), a mapping onto the engine's
tool-call API (docs/architecture.md, the seams table).

- `session.update` `tools` (Realtime's flat `{"type": "function", "name", "description", "parameters"}`,
  handed to the engine in the chat-completions shape) and `tool_choice` are the conversation's config keys
  `tools` / `tool_choice`; `response.create`'s are one response's (`ResponseOptions`).
- A response ends at its calls, as OpenAI's does (`EngineStream.set_tool_wait(False)`): each call is a
  `function_call` item of the response (`ToolCallStarted` -> `response.output_item.added`,
  `ToolCallArguments` -> `response.function_call_arguments.delta`, `ToolCallReady` -> `.done` and
  `response.output_item.done`), and `response.done` (completed) lists it in `response.output`.
- The client's `function_call_output` item is `tool_result`; its `response.create` continues. A
  `function_call` item it creates (history replayed) is `add_tool_call`.
"""

from __future__ import annotations

import typing as tp

from ....engines.base import (BadChoice, EngineFrame, ToolCall, ToolCallArguments, ToolCallReady, ToolCallStarted,
                              Unsupported)
from . import events as rt
from .core import RealtimeBase

TOOL_CHOICES = ("auto", "none", "required")


class ToolsError(ValueError):
    """A `tools` or `tool_choice` value the API refuses; the message says which part."""


def engine_tools(tools: tp.Any) -> list[dict]:
    """Realtime's flat function tools as the chat-completions tools the engine takes."""
    if not isinstance(tools, list):
        raise ToolsError("tools must be a list of function tools")
    converted = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise ToolsError(f"tools[{i}]: only function tools are supported here (got {kind!r})")
        name, parameters = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str) or not name:
            raise ToolsError(f"tools[{i}].name must be a non-empty string")
        if parameters is not None and not isinstance(parameters, dict):
            raise ToolsError(f"tools[{i}].parameters must be a JSON schema object")
        function: dict[str, tp.Any] = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        converted.append({"type": "function", "function": function})
    return converted


def engine_tool_choice(choice: tp.Any) -> str:
    """`auto` / `none` / `required`, or `{"type": "function", "name"}` as the function's name."""
    if choice in TOOL_CHOICES:
        return tp.cast(str, choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return tp.cast(str, choice["name"])
    raise ToolsError("tool_choice must be auto, none, required or {\"type\": \"function\", \"name\": ...}")


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status,
            "call_id": call_id, "name": name, "arguments": arguments}


def function_output_item(item_id: str, call_id: str, output: str) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "status": "completed",
            "call_id": call_id, "output": output}


class FunctionCalls(RealtimeBase):
    # --- the conversation follows OpenAI's: a response ends at its calls ------------------------------
    def _on_start(self, body: dict) -> None:
        super()._on_start(body)
        if self.conversation is not None:
            try:
                self.conversation.stream.set_tool_wait(False)
            except Unsupported:   # an engine that makes no tool calls (a duplex model): `tools` is refused when set
                pass

    def _set_tools(self, changes: dict) -> None:
        """`session.update`'s `tools` / `tool_choice`: the conversation's config keys (an `error` when refused;
        a duplex model takes no tools, and an empty list is no tools anywhere)."""
        config: dict[str, tp.Any] = {}
        try:
            if "tools" in changes:
                config["tools"] = engine_tools(changes["tools"])
            if "tool_choice" in changes:
                config["tool_choice"] = engine_tool_choice(changes["tool_choice"])
        except ToolsError as exc:
            return self.send_error("bad_message", str(exc), "session.tools")
        if self.config.model == "duplex" and not config.get("tools"):
            config.pop("tools", None)
            config.pop("tool_choice", None)
            if "tools" in changes:
                self.config.tools = []
        if not config:
            return
        try:
            self._stream().configure(config)
        except Unsupported as exc:   # a duplex model: `unsupported`
            return self.send_error(exc.code, str(exc), "session.tools")
        else:
            if "tools" in config:
                self.config.tools = list(changes["tools"])
            if "tool_choice" in config:
                self.config.tool_choice = changes["tool_choice"]

    # --- conversation.item.create of function items -------------------------------------------------
    def _create_function_item(self, item: dict, item_id: str) -> dict | None:
        """A `function_call_output` (-> `tool_result`) or a replayed `function_call` (-> `add_tool_call`): the
        item as the client sees it, or None after an `error`."""
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            self.send_error("bad_message", "a function item needs its call_id", "item.call_id")
            return None
        stream = self._stream()
        try:
            if item["type"] == "function_call_output":
                output = item.get("output")
                if not isinstance(output, str):
                    self.send_error("bad_message", "function_call_output.output must be a string", "item.output")
                    return None
                stream.tool_result(call_id, output)
                return function_output_item(item_id, call_id, output)
            name, arguments = item.get("name"), item.get("arguments", "")
            if not isinstance(name, str) or not name or not isinstance(arguments, str):
                self.send_error("bad_message", "a function_call item needs a name and arguments as a string", "item")
                return None
            stream.add_tool_call(ToolCall(call_id, name, arguments or "{}"))
            return function_call_item(item_id, call_id, name, arguments, "completed")
        except BadChoice as exc:
            self.send_error("bad_message", str(exc), "item.call_id")
        except Unsupported as exc:
            self.send_error(exc.code, str(exc), "item")
        return None

    # --- engine frames -> the response's function_call items ----------------------------------------
    def _on_engine_frame(self, frame: EngineFrame) -> None:
        response = self.response
        if not isinstance(frame, (ToolCallStarted, ToolCallArguments, ToolCallReady)) or response is None:
            return super()._on_engine_frame(frame)
        if isinstance(frame, ToolCallStarted):
            item = function_call_item(rt.new_id("item"), frame.call_id, frame.name, "", "in_progress")
            previous = self.items[-1] if self.items else None
            response.calls.append(item)
            self.items.append(item["id"])
            self.wire_items[item["id"]] = item
            self.emit("response.output_item.added", response_id=response.id, output_index=len(response.calls),
                      item=item)
            self.emit("conversation.item.added", previous_item_id=previous, item=item)
            return
        call_id = frame.call.call_id if isinstance(frame, ToolCallReady) else frame.call_id
        found = [(i, c) for i, c in enumerate(response.calls, 1) if c["call_id"] == call_id]
        if not found:
            return
        index, item = found[0]
        where = {"response_id": response.id, "item_id": item["id"], "output_index": index, "call_id": call_id}
        if isinstance(frame, ToolCallArguments):
            item["arguments"] += frame.delta
            self.emit("response.function_call_arguments.delta", **where, delta=frame.delta)
            return
        item.update(arguments=frame.call.arguments, status="completed")
        self.emit("response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"])
        self._call_done(response.id, index, item)

    def _call_done(self, response_id: str, index: int, item: dict) -> None:
        self.emit("response.output_item.done", response_id=response_id, output_index=index, item=dict(item))
        if item["id"] in self.wire_items:
            position = self.items.index(item["id"])
            self.emit("conversation.item.done", previous_item_id=self.items[position - 1] if position else None,
                      item=dict(item))

    def _end_calls(self, response_id: str, calls: list[dict]) -> None:
        """The response is over: a call still streaming (the response was cut) ends incomplete."""
        for index, item in enumerate(calls, 1):
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                self._call_done(response_id, index, item)

