"""Tool handlers for `DuplexClient`: functions the cascade's LLM may call, run by the client.

A `ToolSet` maps a function name to an async (or plain) callable and to its definition in the OpenAI
chat-completions format, which `start` sends as the `tools` config key. The definition is written from
the function itself where not given: its docstring is the description, its parameters (with their type
annotations: str, int, float, bool, list, dict) the JSON schema, those without a default required.
A call's `arguments` (a JSON object) become keyword arguments; the handler's return value is the
`output` (a string as is, anything else as JSON); a handler that raises answers `error: ...`, so the
LLM hears what went wrong and the conversation goes on.

`ToolSet.from_file(path)` loads the handlers of `duplex client --tools FILE.py`: every public function
defined in the file (or those its `__all__` names), each with the definition it gets from itself.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import typing as tp
from pathlib import Path

ToolHandler = tp.Callable[..., tp.Any]   # returns the result, or an awaitable of it

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def function_definition(handler: ToolHandler, name: str | None = None, description: str | None = None,
                        parameters: dict | None = None) -> dict:
    """The chat-completions tool definition of `handler` (what is not given, read from the function)."""
    if parameters is None:
        properties: dict[str, dict] = {}
        required = []
        hints = tp.get_type_hints(handler) if inspect.isfunction(handler) else {}
        for pname, param in inspect.signature(handler).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            kind = _JSON_TYPES.get(hints.get(pname, str), "string")
            properties[pname] = {"type": kind}
            if param.default is param.empty:
                required.append(pname)
        parameters = {"type": "object", "properties": properties, "required": required}
    doc = (inspect.getdoc(handler) or "").split("\n\n")[0].replace("\n", " ")
    return {"type": "function", "function": {"name": name or handler.__name__,
                                             "description": description if description is not None else doc,
                                             "parameters": parameters}}


class ToolSet:
    """Named handlers and their definitions."""

    def __init__(self) -> None:
        self.handlers: dict[str, ToolHandler] = {}
        self.definitions: dict[str, dict] = {}

    def __bool__(self) -> bool:
        return bool(self.handlers)

    def add(self, handler: ToolHandler, name: str | None = None, description: str | None = None,
            parameters: dict | None = None) -> None:
        definition = function_definition(handler, name, description, parameters)
        key = definition["function"]["name"]
        self.handlers[key] = handler
        self.definitions[key] = definition

    def tools(self) -> list[dict]:
        """The `tools` config value: every definition."""
        return list(self.definitions.values())

    async def run(self, name: str, arguments: str) -> str:
        """The `output` of a call: the handler's result, or `error: ...`."""
        handler = self.handlers.get(name)
        if handler is None:
            return f"error: no tool named {name!r}"
        try:
            kwargs = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(kwargs, dict):
                return "error: the arguments are not a JSON object"
            result = handler(**kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # noqa: BLE001 - the LLM hears what went wrong; the conversation goes on
            return f"error: {type(exc).__name__}: {exc}"
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)

    @classmethod
    def from_file(cls, path: str | Path) -> "ToolSet":
        """The public functions defined in a Python file (or those its `__all__` names)."""
        path = Path(path)
        spec = importlib.util.spec_from_file_location(f"duplex_tools_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"{path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items()
            if not n.startswith("_") and inspect.isfunction(v) and v.__module__ == module.__name__]
        tools = cls()
        for n in names:
            tools.add(getattr(module, n))
        if not tools:
            raise ValueError(f"{path} defines no public function to offer as a tool")
        return tools
