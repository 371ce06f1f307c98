"""`duplex.client.tools`: tool definitions read from functions, `--tools FILE.py`, running a call."""

from __future__ import annotations

import argparse

from duplex.client import cli as client_cli
from duplex.client.tools import ToolSet, function_definition

TOOLS_FILE = '''
import json

__doc__ = "tools for a test"

async def get_weather(city: str, days: int = 1) -> str:
    """The weather in a city.

    More words that are not the description."""
    return f"sunny in {city} for {days} days"

def add(a: float, b: float) -> dict:
    """Adds two numbers."""
    return {"sum": a + b}

def broken() -> str:
    raise RuntimeError("no network")

def _private() -> None:
    pass
'''


async def test_a_file_of_functions_becomes_tools_and_runs_calls(tmp_path) -> None:
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_FILE)
    tools = ToolSet.from_file(path)
    assert sorted(tools.handlers) == ["add", "broken", "get_weather"]
    assert tools.definitions["get_weather"] == {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}}
    assert await tools.run("get_weather", '{"city": "Paris"}') == "sunny in Paris for 1 days"
    assert await tools.run("add", '{"a": 1, "b": 2.5}') == '{"sum": 3.5}'
    assert await tools.run("broken", "{}") == "error: RuntimeError: no network"
    assert (await tools.run("get_weather", "{not json")).startswith("error: JSONDecodeError")
    assert await tools.run("nope", "{}") == "error: no tool named 'nope'"


def test_a_definition_can_be_given_whole() -> None:
    definition = function_definition(lambda **kw: "x", name="lookup", description="Looks up.",
                                     parameters={"type": "object", "properties": {}})
    assert definition["function"] == {"name": "lookup", "description": "Looks up.",
                                      "parameters": {"type": "object", "properties": {}}}


def test_the_tools_flag_takes_a_file_and_stays_out_of_the_config() -> None:
    parser = argparse.ArgumentParser(prog="duplex")
    client_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["client", "--tools", "my_tools.py", "--tool-choice", "required", "--tool-timeout-s", "5"])
    assert args.tools == "my_tools.py"
    assert client_cli.build_config(args) == {"tool_choice": "required", "tool_timeout_s": 5.0}
