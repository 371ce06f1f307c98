"""The voice-agent frameworks as real clients of /v1/realtime (test-only dependencies, the `frameworks`
extra): LiveKit's `RealtimeModel.session()` driven directly, as LiveKit's AgentSession drives it
(instructions, the chat context, tools, generate_reply), and pipecat's `OpenAIRealtimeLLMService` in a
pipeline; each with a plain typed turn and with a registered function whose result reaches the answer."""

from __future__ import annotations

import asyncio
import json
import importlib
import os
import types

import aiohttp
import pytest

from .llm_standin import reply_for
from .test_cascade import next_request


def framework(module: str) -> types.ModuleType:
    """The framework's module; skipped where the `frameworks` extra is not installed, except that
    DUPLEX_REQUIRE_FRAMEWORKS=1 (set by .ci/run) makes a missing framework a failure."""
    if os.environ.get("DUPLEX_REQUIRE_FRAMEWORKS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


async def test_livekit_realtime_model_answers_a_plain_turn(cascade_server, llm_standin):
    lk_openai = framework("livekit.plugins.openai")
    from livekit.agents import llm

    async with aiohttp.ClientSession() as http:
        model = lk_openai.realtime.RealtimeModel(model="cascade", base_url=cascade_server.http_url + "/v1",
                                                 api_key="unused", http_session=http)
        session = model.session()
        errors: list = []
        session.on("error", errors.append)
        try:
            await session.update_instructions("Be brief.")
            chat_ctx = llm.ChatContext()
            chat_ctx.add_message(role="user", content="hello there")
            await session.update_chat_ctx(chat_ctx)
            n = len(llm_standin.requests)
            generation = await asyncio.wait_for(session.generate_reply(), 30)
            request = await next_request(llm_standin, n)
            assert request[0] == {"role": "system", "content": "Be brief."}
            assert request[-1] == {"role": "user", "content": "hello there"}
            text, frames, _ = await _livekit_reply(generation)
            assert text.strip() == reply_for(2, long=False) and frames > 0
            assert not errors, errors
        finally:
            await session.aclose()
            await model.aclose()


async def _livekit_reply(generation) -> tuple[str, int, list]:
    """A LiveKit generation read as AgentSession reads it: the spoken message (its transcript and how many
    audio frames) and the function calls of the response."""
    text, frames, calls = "", 0, []

    async def functions() -> None:
        async for call in generation.function_stream:
            calls.append(call)

    reading = asyncio.create_task(functions())
    async for message in generation.message_stream:
        async def audio(stream=message.audio_stream) -> int:
            return sum([1 async for _ in stream])
        counting = asyncio.create_task(audio())
        async for delta in message.text_stream:
            text += delta
        frames += await asyncio.wait_for(counting, 30)
    await asyncio.wait_for(reading, 30)
    return text, frames, calls


async def test_livekit_realtime_model_runs_a_registered_function(cascade_server, llm_standin):
    """LiveKit's RealtimeModel session with a `function_tool`, driven as AgentSession drives it (the plugin
    says `auto_tool_reply_generation=False`, `manual_function_calls=True`): the call comes out of the
    response's function stream; the tool runs with the arguments LiveKit prepares; its output joins the
    chat context (update_chat_ctx) and a second generate_reply speaks the answer that uses it. The
    response.done usage reaches LiveKit's metrics as token counts."""
    lk_openai = framework("livekit.plugins.openai")
    from livekit.agents import llm

    runs: list[str] = []

    @llm.function_tool
    async def get_weather(city: str) -> str:
        """The weather in a city."""
        runs.append(city)
        return f"sunny in {city}"     # (LiveKit sends a tool's output as str(output))

    async with aiohttp.ClientSession() as http:
        model = lk_openai.realtime.RealtimeModel(model="cascade", base_url=cascade_server.http_url + "/v1",
                                                 api_key="unused", http_session=http)
        session = model.session()
        errors: list = []
        metrics: list = []
        session.on("error", errors.append)
        session.on("metrics_collected", metrics.append)
        try:
            await session.update_instructions("Be brief.")
            await session.update_tools([get_weather])
            chat_ctx = llm.ChatContext()
            chat_ctx.add_message(role="user", content="what is the weather")
            await session.update_chat_ctx(chat_ctx)
            n = len(llm_standin.requests)
            text, frames, calls = await _livekit_reply(await asyncio.wait_for(session.generate_reply(), 30))
            assert [t["function"]["name"] for t in llm_standin.bodies[n]["tools"]] == ["get_weather"]
            assert text.strip() == "let me check" and frames > 0
            assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]

            # what AgentSession does with a call (voice/generation.py, agent_activity.py): run the tool ...
            args, kwargs = llm.utils.prepare_function_arguments(fnc=get_weather, json_arguments=calls[0].arguments)
            result = llm.utils.make_function_call_output(fnc_call=calls[0], output=await get_weather(*args, **kwargs),
                                                         exception=None)
            assert runs == ["Paris"] and result.fnc_call_out is not None
            # ... put its output in the session's chat context, and ask for the reply
            chat_ctx = session.chat_ctx.copy()
            chat_ctx.items.append(result.fnc_call_out)
            await session.update_chat_ctx(chat_ctx)
            n = len(llm_standin.requests)
            text, frames, calls = await _livekit_reply(
                await asyncio.wait_for(session.generate_reply(tool_choice="auto"), 30))
            request = await next_request(llm_standin, n)
            call_message = next(m for m in request if m.get("tool_calls"))
            assert call_message["tool_calls"][0]["function"]["name"] == "get_weather"
            tool_message = request[-1]
            assert tool_message["role"] == "tool"
            assert tool_message["tool_call_id"] == call_message["tool_calls"][0]["id"]
            assert tool_message["content"] == "sunny in Paris"
            assert " ".join(text.split()) == "the tool said sunny in Paris" and frames > 0 and not calls
            # each response.done's usage, as LiveKit reports it (the stand-in counts its chunks as tokens)
            sent = llm_standin.usages[n]
            assert any((m.input_tokens, m.output_tokens, m.total_tokens) ==
                       (sent["prompt_tokens"], sent["completion_tokens"], sent["total_tokens"]) for m in metrics), metrics
            assert not errors, errors
        finally:
            await session.aclose()
            await model.aclose()


async def test_pipecat_realtime_service_answers_a_plain_turn(cascade_server, llm_standin):
    """pipecat's OpenAIRealtimeLLMService in a pipeline of its own: a context with a user message in, the
    spoken reply (audio frames and its transcript) out, ended by LLMFullResponseEndFrame."""
    realtime_llm = framework("pipecat.services.openai.realtime.llm")
    from pipecat.frames.frames import (EndFrame, ErrorFrame, LLMContextFrame, LLMFullResponseEndFrame,
                                       TTSAudioRawFrame, TTSTextFrame)
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    service = realtime_llm.OpenAIRealtimeLLMService(
        api_key="unused", base_url=cascade_server.http_url.replace("http://", "ws://") + "/v1/realtime",
        settings=realtime_llm.OpenAIRealtimeLLMService.Settings(model="cascade", system_instruction="Be brief."))
    seen: list = []
    ended = asyncio.Event()

    class Collector(FrameProcessor):
        async def process_frame(self, frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, (TTSAudioRawFrame, TTSTextFrame, ErrorFrame)):
                seen.append(frame)
            if isinstance(frame, LLMFullResponseEndFrame):
                ended.set()
            await self.push_frame(frame, direction)

    task = PipelineTask(Pipeline([service, Collector()]))
    runner = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
    n = len(llm_standin.requests)
    context = LLMContext(messages=[{"role": "user", "content": "hello there"}])
    await task.queue_frames([LLMContextFrame(context)])
    request = await next_request(llm_standin, n, timeout=30)
    assert request[0] == {"role": "system", "content": "Be brief."}
    assert request[-1] == {"role": "user", "content": "hello there"}
    await asyncio.wait_for(ended.wait(), 45)
    await task.queue_frame(EndFrame())
    await asyncio.wait_for(runner, 30)
    assert not [f for f in seen if isinstance(f, ErrorFrame)], seen
    assert sum(isinstance(f, TTSAudioRawFrame) for f in seen) > 0
    text = " ".join(f.text for f in seen if isinstance(f, TTSTextFrame))
    assert text.split() == reply_for(2, long=False).split()


WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def test_pipecat_realtime_service_runs_a_registered_function(cascade_server, llm_standin):
    """pipecat's usual function-calling pipeline (context aggregators around the service): the call reaches
    the registered handler, its result goes back as a function_call_output with a response.create, and the
    spoken answer uses it."""
    realtime_llm = framework("pipecat.services.openai.realtime.llm")
    from pipecat.adapters.schemas.function_schema import FunctionSchema
    from pipecat.adapters.schemas.tools_schema import ToolsSchema
    from pipecat.frames.frames import EndFrame, ErrorFrame, LLMRunFrame, TTSTextFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.runner import PipelineRunner
    from pipecat.pipeline.task import PipelineTask
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    service = realtime_llm.OpenAIRealtimeLLMService(
        api_key="unused", base_url=cascade_server.http_url.replace("http://", "ws://") + "/v1/realtime",
        settings=realtime_llm.OpenAIRealtimeLLMService.Settings(model="cascade", system_instruction="Be brief."))
    calls: list = []

    async def get_weather(params) -> None:
        calls.append(params.arguments)
        await params.result_callback({"forecast": f"sunny in {params.arguments['city']}"})

    service.register_function("get_weather", get_weather)
    tools = ToolsSchema(standard_tools=[FunctionSchema(name="get_weather", description="The weather in a city.",
                                                       properties=WEATHER_PARAMS["properties"], required=["city"])])
    context = LLMContext(messages=[{"role": "user", "content": "what is the weather"}], tools=tools)
    aggregators = LLMContextAggregatorPair(context)
    seen: list = []
    answered = asyncio.Event()

    class Collector(FrameProcessor):
        async def process_frame(self, frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, (TTSTextFrame, ErrorFrame)):
                seen.append(frame)
                if "the tool said" in " ".join("".join(f.text for f in seen if isinstance(f, TTSTextFrame)).split()):
                    answered.set()
            await self.push_frame(frame, direction)

    task = PipelineTask(Pipeline([aggregators.user(), service, Collector(), aggregators.assistant()]))
    runner = asyncio.create_task(PipelineRunner(handle_sigint=False).run(task))
    n = len(llm_standin.requests)
    try:
        await task.queue_frames([LLMRunFrame()])
        await asyncio.wait_for(answered.wait(), 60)
        await task.queue_frame(EndFrame())
        await asyncio.wait_for(runner, 30)
    finally:
        runner.cancel()
    assert calls == [{"city": "Paris"}]
    assert [t["function"]["name"] for t in llm_standin.bodies[n]["tools"]] == ["get_weather"]
    result = next(m for m in llm_standin.requests[-1] if m["role"] == "tool")
    assert json.loads(result["content"]) == {"forecast": "sunny in Paris"}
    assert not [f for f in seen if isinstance(f, ErrorFrame)], seen
