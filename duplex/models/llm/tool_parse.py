"""Tool calls in an in-process model's text: the formats its chat template taught it, parsed as they stream.

An endpoint (vLLM, llama.cpp, ...) parses its model's calls itself and streams them as `tool_calls`
deltas; a model run in process writes them as text, so `ToolCallParser` reads them out of the deltas:

- **Hermes / Qwen** (Qwen2.5, Qwen3, Hermes 2/3, SmolLM3 and the tiny preset's template):
  `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, one object per tag, several tags in a row;
- **SmolLM2** (its function-calling data, APIGen-style): `<tool_call>[{"name": "f", "arguments": {...}}, ...]</tool_call>`,
  a JSON list in one tag.

A call is handed on only when its closing tag has come (or the answer ended right after complete JSON) and
the JSON is a valid call (an object with a string `name` and an object `arguments`, `parameters` taken as
a synonym): nothing is executed half-parsed. A block that is not a valid call (broken JSON, no name) is
given back as text, to be spoken as the model wrote it. Text outside the tags streams on at once, except
the few characters that might be the start of a tag (held until the next delta tells).
"""

from __future__ import annotations

import json
import typing as tp
import uuid

from .base import LLMDelta, ToolCallDelta

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FORMATS = ("hermes", "smollm2")   # the names docs/llm.md uses


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallParser:
    """Feed it text deltas; it gives back text deltas and complete `ToolCallDelta`s (one per call)."""

    def __init__(self, call_id: tp.Callable[[], str] = new_call_id):
        self.call_id = call_id
        self.buffer = ""           # text not handed on yet: a possible tag start, or a block's inside
        self.inside = False        # between <tool_call> and </tool_call>
        self.calls = 0             # calls handed on (the next one's index)

    def feed(self, text: str) -> list[LLMDelta]:
        self.buffer += text
        out: list[LLMDelta] = []
        while True:
            if not self.inside:
                start = self.buffer.find(OPEN)
                if start < 0:
                    keep = _partial_suffix(self.buffer, OPEN)
                    _text(out, self.buffer[:len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    return out
                _text(out, self.buffer[:start])
                self.buffer, self.inside = self.buffer[start + len(OPEN):], True
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out
            body, self.buffer, self.inside = self.buffer[:end], self.buffer[end + len(CLOSE):], False
            out.extend(self._block(body, closed=True))

    def finish(self) -> list[LLMDelta]:
        """The answer ended: an open block with complete JSON is still a call; anything else is text."""
        out: list[LLMDelta] = []
        if self.inside:
            out.extend(self._block(self.buffer, closed=False))
        else:
            _text(out, self.buffer)
        self.buffer, self.inside = "", False
        return out

    def _block(self, body: str, closed: bool) -> list[LLMDelta]:
        calls = parse_calls(body)
        if calls is None:
            return [OPEN + body + (CLOSE if closed else "")]   # not a call: spoken as written
        out: list[LLMDelta] = []
        for name, arguments in calls:
            out.append(ToolCallDelta(self.calls, self.call_id(), name, arguments))
            self.calls += 1
        return out


def parse_calls(body: str) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) of each call in a block's JSON (an object or a list of them), or None."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):      # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append((item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is the start of `tag` (0 if none)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _text(out: list[LLMDelta], text: str) -> None:
    if text:
        out.append(text)


def hermes_tools_prompt(tools: list[dict]) -> str:
    """The tools block for a chat template that cannot render tools itself (SmolLM2's, plain ChatML): the
    Hermes/Qwen2.5 wording, so the model answers in the format the parser reads."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{listed}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
