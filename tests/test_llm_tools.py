"""Tool calls at the LLM seam: the in-process parser on recorded outputs of each format it reads, the
chat-template side (native and written-in), the tiny LLM made to emit a call through the real template
path inside a real `AssistantTurn`, and the OpenAI-compatible backend against the stand-in's streamed
`delta.tool_calls`."""

from __future__ import annotations

import asyncio
import json

import pytest

from duplex.engines.base import AssistantTurnDone, EngineFailure, ToolCallArguments, ToolCallReady, ToolCallStarted
from duplex.engines.cascade_turn import AssistantTurn
from duplex.engines.tool_calls import TurnTools
from duplex.models.llm import ChatMessage, OpenAICompatibleLLM, TokenUsage, TransformersLLM, load_llm
from duplex.models.llm.base import ToolCall, ToolCallDelta
from duplex.models.llm.chat_prompt import template_messages
from duplex.models.llm.tool_parse import ToolCallParser
from duplex.models.tiny.llm import CHATML_TEMPLATE

from .test_cascade_turn import FakeEngine, FakeLLM

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


async def until(check, timeout: float = 60.0) -> None:
    """Waits for `check()` (bounded by an event of the turn, with a generous deadline for a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def parse(chunks: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    """Spoken text and (name, arguments) of the calls, feeding `chunks` one by one."""
    ids = iter(f"c{i}" for i in range(10))
    parser = ToolCallParser(call_id=lambda: next(ids))
    out = [item for chunk in chunks for item in parser.feed(chunk)] + parser.finish()
    text = "".join(item for item in out if isinstance(item, str))
    calls = [(item.name or "", json.loads(item.arguments)) for item in out if isinstance(item, ToolCallDelta)]
    assert [item.index for item in out if isinstance(item, ToolCallDelta)] == list(range(len(calls)))
    return text, calls


# Recorded outputs (the models' own words, from their model cards and chat templates).
QWEN_ONE = 'Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
QWEN_TWO = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
SMOLLM2 = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
           '{"name": "get_time", "arguments": {}}]</tool_call>')


@pytest.mark.parametrize("split", ["whole", "by character", "by 3"])
def test_the_formats_parse_whole_or_split_across_deltas(split: str) -> None:
    def chunks(text: str) -> list[str]:
        size = {"whole": len(text), "by character": 1, "by 3": 3}[split]
        return [text[i:i + size] for i in range(0, len(text), size)]

    assert parse(chunks(QWEN_ONE)) == ("Let me look that up.\n", [("get_weather", {"city": "Paris"})])
    assert parse(chunks(QWEN_TWO))[1] == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert parse(chunks(SMOLLM2)) == ("", [("get_weather", {"city": "Paris"}), ("get_time", {})])
    # Hermes' arguments as a JSON string, `parameters` for `arguments`
    assert parse(chunks('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'))[1] == [("f", {"a": 1})]
    assert parse(chunks('<tool_call>{"name": "f", "parameters": {"a": 2}}</tool_call>'))[1] == [("f", {"a": 2})]


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par</tool_call>',   # broken JSON
    '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>',                      # no name
    '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',                    # arguments not an object
    '<tool_call>[]</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"ci',                        # cut off by max_tokens
    "a <tool and a < b, <tool_cal",                                                  # tag-like text, no tag
])
def test_what_is_not_a_valid_call_is_spoken_as_written(text: str) -> None:
    for size in (1, len(text)):
        spoken, calls = parse([text[i:i + size] for i in range(0, len(text), size)])
        assert calls == [] and spoken == text


def test_a_call_cut_by_the_end_of_the_answer_counts_only_when_its_json_is_complete() -> None:
    assert parse(['<tool_call>\n{"name": "f", "arguments": {}}'])[1] == [("f", {})]
    assert parse(["Sure. ", "<tool_", "call>"]) == ("Sure. <tool_call>", [])


def test_templates_without_tools_get_them_written_in_the_hermes_format() -> None:
    history = [ChatMessage("system", "Be brief."), ChatMessage("user", "weather?"),
               ChatMessage("assistant", "one moment", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)),
               ChatMessage("tool", "sunny", tool_call_id="c1")]
    written = template_messages(history, [WEATHER], native=False)
    assert written[0]["role"] == "system" and "<tools>" in written[0]["content"] and '"get_weather"' in written[0]["content"]
    assert written[2] == {"role": "assistant", "content": 'one moment\n<tool_call>\n{"name": "get_weather", '
                                                          '"arguments": {"city": "Paris"}}\n</tool_call>'}
    assert written[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    native = template_messages(history, [WEATHER], native=True)
    assert native[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert native[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


class ForcedCall(TransformersLLM):
    """The tiny LLM made to emit a call: its answer starts with a whole call (as a `tool_choice` naming a
    function forces the start of one), then the random model goes on babbling."""

    def forced_prefix(self, tools, tool_choice) -> str:
        if tools and tool_choice == "get_weather":
            return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        return super().forced_prefix(tools, tool_choice)


@pytest.fixture(scope="module")
def forced_llm() -> ForcedCall:
    tiny = load_llm("tiny", "cpu", seed=3)
    assert isinstance(tiny, TransformersLLM)
    assert tiny.tokenizer.chat_template == CHATML_TEMPLATE
    return ForcedCall(tiny.model, tiny.tokenizer, name="tiny-forced", seed=3)


async def test_a_turn_with_the_tiny_llm_calling_a_tool_through_its_chat_template(forced_llm: ForcedCall) -> None:
    engine = FakeEngine(FakeLLM([]))
    engine.llm, engine.max_tokens = forced_llm, 6
    out: list = []
    history = [ChatMessage("user", "what is the weather in paris")]
    prompt = forced_llm.render_prompt([ChatMessage("system", "s"), *history], [WEATHER])
    assert "<tools>" in prompt and '"get_weather"' in prompt          # the template rendered the tools
    before = forced_llm.tokens_generated
    turn = AssistantTurn(engine, out.append, history, {"user_end": 0.0}, system_prompt="s", voice=None,
                         temperature=0.0, seed=None, tools=TurnTools((WEATHER,), "get_weather", timeout_s=60))
    await until(lambda: any(isinstance(f, ToolCallReady) for f in out))
    ready = next(f for f in out if isinstance(f, ToolCallReady))
    assert ready.call.name == "get_weather" and json.loads(ready.call.arguments) == {"city": "Paris"}
    assert [type(f) for f in out if type(f).__name__.startswith("ToolCall")] == [ToolCallStarted, ToolCallArguments,
                                                                                ToolCallReady]
    assert history[-1].tool_calls == (ready.call,)
    assert turn.tool_result(ready.call.call_id, "sunny, 21 degrees")
    assert not turn.tool_result(ready.call.call_id, "twice")          # answered already
    await until(lambda: not (len(history) < 3))          # the turn takes the result in and asks the LLM again
    # the second response: the call and its result through the template, answered in words (tool_choice auto)
    rendered = forced_llm.render_prompt([ChatMessage("system", "s"), *history], [WEATHER])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered
    assert "<tool_response>\nsunny, 21 degrees\n</tool_response>" in rendered
    await until(lambda: engine.turn.ended)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 30)
    usage = out[-1].usage                    # both LLM responses of the turn: the call, then the answer
    assert out[-1] == AssistantTurnDone(usage=usage) and usage.responses == 2
    assert usage.output_tokens == forced_llm.tokens_generated - before
    system = ChatMessage("system", "s")
    first = forced_llm.prompt_ids([system, history[0]], 6, [WEATHER]) + forced_llm.tokenizer(
        forced_llm.forced_prefix([WEATHER], "get_weather"), add_special_tokens=False)["input_ids"]
    assert usage.input_tokens == len(first) + len(forced_llm.prompt_ids([system, *history[:3]], 6, [WEATHER]))
    assert [m.role for m in history][:3] == ["user", "assistant", "tool"]
    assert history[2] == ChatMessage("tool", "sunny, 21 degrees", tool_call_id=ready.call.call_id)
    assert not any(isinstance(f, EngineFailure) for f in out)


@pytest.mark.parametrize("ending", ["timeout", "cancel"])
async def test_a_waiting_turn_times_out_and_a_cancelled_one_records_the_cancel(ending: str) -> None:
    calls = [ToolCallDelta(0, "c1", "get_weather", '{"city": "Paris"}')]
    engine = FakeEngine(FakeLLM(["checking ", *calls]))
    out: list = []
    history = [ChatMessage("user", "weather?")]
    turn = AssistantTurn(engine, out.append, history, {"user_end": 0.0}, system_prompt="s", voice=None,
                         temperature=0.0, seed=None,
                         tools=TurnTools((WEATHER,), timeout_s=0.2 if ending == "timeout" else 60.0))
    await until(lambda: any(isinstance(f, ToolCallReady) for f in out))
    assert engine.turn.text == "checking "      # what came before the call went to the TTS whole
    if ending == "cancel":
        turn.cancel()
    else:
        await until(lambda: any(isinstance(f, EngineFailure) for f in out))
        assert "no result within 0.2 s" in next(f for f in out if isinstance(f, EngineFailure)).message
        engine.turn.finished = True
        turn.on_tts_frames([], turn.text_version)
    await asyncio.gather(turn.task, return_exceptions=True)
    assert not turn.tool_result("c1", "late")
    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    assert history[1] == ChatMessage("assistant", "checking", tool_calls=(call,))
    assert history[2].role == "tool" and history[2].tool_call_id == "c1" and history[2].content.startswith("error:")
    assert len(history) == 3


async def test_the_endpoint_backend_passes_tools_and_reads_streamed_tool_calls(llm_standin) -> None:
    llm = OpenAICompatibleLLM(llm_standin.url)
    history = [ChatMessage("system", "s"), ChatMessage("user", "weather TWO")]
    try:
        out = [d async for d in llm.stream(history, temperature=0.0, max_tokens=50, cancel=asyncio.Event(),
                                           tools=[WEATHER], tool_choice="get_weather")]
        body = llm_standin.bodies[-1]
        assert body["tools"] == [WEATHER]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert "".join(d for d in out if isinstance(d, str)) == "let me check"
        pieces = [d for d in out if isinstance(d, ToolCallDelta)]
        for index in (0, 1):
            mine = [p for p in pieces if p.index == index]
            assert mine[0].name == "get_weather" and mine[0].call_id
            assert json.loads("".join(p.arguments for p in mine)) == {"city": "Paris"}
        # the history's call and result go out in the OpenAI shapes
        call = ToolCall(pieces[0].call_id or "", "get_weather", '{"city": "Paris"}')
        history += [ChatMessage("assistant", "let me check", tool_calls=(call,)),
                    ChatMessage("tool", "sunny", tool_call_id=call.call_id)]
        text = "".join([d async for d in llm.stream(history, temperature=0.0, max_tokens=50, cancel=asyncio.Event(),
                                                    tools=[WEATHER])]) 
        assert text == "the tool said sunny"
        assert llm_standin.requests[-1][2:] == [
            {"role": "assistant", "content": "let me check", "tool_calls": [call.to_openai()]},
            {"role": "tool", "content": "sunny", "tool_call_id": call.call_id}]
        assert "tools" not in (await _body_without_tools(llm, llm_standin))
    finally:
        await llm.close()


async def _body_without_tools(llm: OpenAICompatibleLLM, llm_standin) -> dict:
    [d async for d in llm.stream([ChatMessage("user", "hi")], temperature=0.0, max_tokens=5, cancel=asyncio.Event())]
    return llm_standin.bodies[-1]


async def test_a_turn_that_does_not_wait_ends_at_its_calls() -> None:
    """The Realtime API's way (`set_tool_wait(False)`): the response that made the call ends with it."""
    engine = FakeEngine(FakeLLM(["one moment", ToolCallDelta(0, "c1", "get_weather", '{"city":'),
                                 ToolCallDelta(0, None, None, ' "Rome"}')]))
    out: list = []
    history = [ChatMessage("user", "weather?")]
    turn = AssistantTurn(engine, out.append, history, {"user_end": 0.0}, system_prompt="s", voice=None,
                         temperature=0.0, seed=None, tools=TurnTools((WEATHER,), wait=False))
    await until(lambda: engine.turn.ended)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 5)
    call = ToolCall("c1", "get_weather", '{"city": "Rome"}')
    assert [f for f in out if type(f).__name__.startswith("ToolCall")] == [
        ToolCallStarted("c1", "get_weather"), ToolCallArguments("c1", '{"city":'), ToolCallArguments("c1", ' "Rome"}'),
        ToolCallReady(call)]
    assert out[-1] == AssistantTurnDone(tool_calls=(call,), usage=TokenUsage())   # (a fake LLM counts nothing)
    assert history == [ChatMessage("user", "weather?"), ChatMessage("assistant", "one moment", tool_calls=(call,))]
    assert not turn.tool_result("c1", "sunny")      # nothing waits: the stream adds it to the history instead
