"""The history as a chat template reads it, tools included (the in-process backend's prompt side).

A template that knows tools (Qwen2.5's, Hermes', the tiny preset's: it reads `tools` and renders
`tool_calls` and `tool` messages) gets them through `apply_chat_template(..., tools=...)`, with each
call's arguments as an object, as transformers' templates expect. A template that does not (SmolLM2's,
plain ChatML) would drop them silently, so for it the same things are written in the Hermes format the
parser reads (`tool_parse.py`): the tools block at the end of the system prompt, a call as
`<tool_call>` JSON in the assistant's text, a result as a user turn in `<tool_response>` tags.
"""

from __future__ import annotations

import json
import typing as tp

from .base import ChatMessage, ToolCall, ToolChoice, tool_choice_name
from .tool_parse import CLOSE, OPEN, hermes_tools_prompt


def template_knows_tools(template: tp.Any) -> bool:
    """Whether a chat template renders tools itself (it reads the `tools` variable)."""
    return isinstance(template, str) and "tools" in template


def template_messages(messages: list[ChatMessage], tools: list[dict] | None, native: bool) -> list[dict]:
    """`messages` as a template's `messages`; for a template without tool support (`native` False), the
    tools and the calls in the history are written into the text in the Hermes format."""
    if native:
        return [_native(m) for m in messages]
    out = [_written(m) for m in messages]
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + hermes_tools_prompt(tools)}
        else:
            out.insert(0, {"role": "system", "content": hermes_tools_prompt(tools).lstrip()})
    return out


def forced_prefix(tools: list[dict] | None, tool_choice: ToolChoice | None) -> str:
    """What the answer must start with for the `tool_choice` to hold: `required` opens a call, a function
    name opens a call of that function; `auto` (or no tools) forces nothing."""
    if not tools:
        return ""
    name = tool_choice_name(tool_choice)
    if name is not None:
        return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
    return f"{OPEN}\n" if tool_choice == "required" else ""


def _arguments(call: ToolCall) -> tp.Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def _native(message: ChatMessage) -> dict:
    out: dict[str, tp.Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.call_id, "type": "function",
                              "function": {"name": c.name, "arguments": _arguments(c)}} for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _written(message: ChatMessage) -> dict:
    if message.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.content}\n</tool_response>"}
    content = message.content
    for call in message.tool_calls:
        written = json.dumps({"name": call.name, "arguments": _arguments(call)}, ensure_ascii=False)
        content = f"{content}\n{OPEN}\n{written}\n{CLOSE}".lstrip("\n")
    return {"role": message.role, "content": content}
