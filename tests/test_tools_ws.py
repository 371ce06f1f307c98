"""Tool calls on /ws: `DuplexClient` handlers against the cascade (tiny STT + TTS, the LLM behind the
stand-in, which calls a tool when tools are offered), through the real server and protocol."""

from __future__ import annotations

import asyncio
import json

from duplex.bench.latency import LiveMic
from duplex.client import DuplexClient

from .test_cascade import next_request


async def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def tool_conversation(server, handler=get_weather, **config) -> tuple[DuplexClient, LiveMic]:
    client = await DuplexClient.connect(server.http_url, codec="pcm16")
    if handler is not None:
        client.register_tool(handler, name="get_weather")
    await client.start(mode="cascade", config=config)
    status = await client.wait_for("status")
    assert status.data["mode"] == "cascade", status.data
    return client, LiveMic(client)


def assistant_final(client: DuplexClient, after: int = 0):
    return client.wait_for("final_transcript", timeout=60,
                           predicate=lambda e: e.data["role"] == "assistant" and len(client.events) > after)


async def test_a_call_round_trip_with_a_client_handler(cascade_server, llm_standin):
    client, mic = await tool_conversation(cascade_server)
    try:
        n = len(llm_standin.requests)
        await client.text_input("what is the weather")
        call = await client.wait_for("tool_call", timeout=30)
        assert call.data["name"] == "get_weather" and json.loads(call.data["arguments"]) == {"city": "Paris"}
        final = await assistant_final(client)
        assert final.data["content"] == "let me check the tool said sunny in Paris"   # one turn, both parts spoken
        assert llm_standin.bodies[n]["tools"][0]["function"]["name"] == "get_weather"   # offered from the handler
        answer = await next_request(llm_standin, n + 1)
        call_id = call.data["call_id"]
        assert answer[1:] == [
            {"role": "user", "content": "what is the weather"},
            {"role": "assistant", "content": "let me check", "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "content": "sunny in Paris", "tool_call_id": call_id}]
        assert len(client.events_of("tts_start")) == 1 and not client.events_of("error")
        # the history keeps the call and its result for later turns
        await client.wait_for("metrics", timeout=30)
        n = len(llm_standin.requests)
        await client.configure({"tool_choice": "none"})
        await client.text_input("thanks")
        later = await next_request(llm_standin, n)
        assert [m["role"] for m in later] == ["system", "user", "assistant", "tool", "assistant", "user"]
        assert later[4]["content"] == "the tool said sunny in Paris"
        assert len(client.events_of("tool_call")) == 1                  # tool_choice none: no call
    finally:
        mic.close()
        await client.close()


async def test_two_calls_in_one_response_and_a_chained_call(cascade_server, llm_standin):
    seen: list[str] = []

    async def chaining(city: str) -> str:
        seen.append(city)
        return "CHAIN more" if len(seen) <= 2 else f"rain in {city}"   # the first response made two calls

    client, mic = await tool_conversation(cascade_server, handler=chaining)
    try:
        n = len(llm_standin.requests)
        await client.text_input("weather TWO")
        final = await assistant_final(client)
        assert len(client.events_of("tool_call")) == 3               # two in the first response, one chained
        assert final.data["content"].endswith("the tool said rain in Paris")
        requests = llm_standin.requests[n:]
        assert [m["role"] for m in requests[1]][-3:] == ["assistant", "tool", "tool"]
        assert len(requests[1][-3]["tool_calls"]) == 2
        assert [m["role"] for m in requests[2]][-2:] == ["assistant", "tool"]
    finally:
        mic.close()
        await client.close()


async def test_interrupt_cancels_a_waiting_call_and_a_late_result_is_refused(cascade_server, llm_standin):
    release = asyncio.Event()

    async def slow(city: str) -> str:
        await release.wait()
        return "too late"

    client, mic = await tool_conversation(cascade_server, handler=slow)
    try:
        await client.text_input("what is the weather")
        call = await client.wait_for("tool_call", timeout=30)
        await client.interrupt()
        await client.wait_for("interrupt_acknowledged")
        release.set()                                      # the handler answers now: nothing waits for it
        error = await client.wait_for("error", timeout=10)
        assert error.data["code"] == "bad_message" and call.data["call_id"] in error.data["message"]
        n = len(llm_standin.requests)
        await client.configure({"tool_choice": "none"})
        await client.text_input("are you there")             # the conversation goes on
        history = await next_request(llm_standin, n)
        assert history[-2] == {"role": "tool", "tool_call_id": call.data["call_id"],
                               "content": "error: cancelled before its result came (the user interrupted)"}
        await assistant_final(client)
    finally:
        mic.close()
        await client.close()


async def test_a_call_without_a_result_times_out_and_the_conversation_goes_on(cascade_server, llm_standin):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    client, mic = await tool_conversation(cascade_server, handler=None, tools=tools, tool_timeout_s=0.5)
    try:
        await client.text_input("what is the weather")
        call = await client.wait_for("tool_call", timeout=30)
        error = await client.wait_for("error", timeout=30)
        assert error.data["code"] == "timeout" and "no result within 0.5 s" in error.data["message"]
        await client.wait_for("metrics", timeout=30)                   # the turn ended (what it said was played)
        await client.tool_result(call.data["call_id"], "late")
        late = await client.wait_for("error", timeout=10, predicate=lambda e: e is not error)
        assert late.data["code"] == "bad_message"
        await client.configure({"tool_choice": "none"})
        await client.text_input("hello again")
        await assistant_final(client, after=len(client.events))
    finally:
        mic.close()
        await client.close()


async def test_a_duplex_model_refuses_tools(cascade_server):
    client = await DuplexClient.connect(cascade_server.http_url, codec="pcm16")
    try:
        await client.start(mode="duplex", config={"tools": [{"type": "function", "function": {"name": "f"}}]})
        error = await client.wait_for("error", timeout=10)
        assert error.data["code"] == "unsupported" and "tools" in error.data["message"]
    finally:
        await client.close()
