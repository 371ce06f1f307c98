"""Function calling on /v1/realtime with the official `openai` SDK as the client, against the cascade
(tiny STT + TTS, the LLM behind the stand-in, which calls the first tool offered): the events of a call,
the result and the `response.create` that continues, overrides, cancels and late results."""

from __future__ import annotations

import json
import typing as tp

import pytest

from .rtc import TRANSPORTS
from .test_cascade import next_request
from .test_realtime import Events, realtime, text_turn

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
CALL_EVENTS = ("response.output_item.added", "conversation.item.added", "response.function_call_arguments.delta",
               "response.function_call_arguments.done", "response.output_item.done", "conversation.item.done")

# every test runs over the WebSocket and over a WebRTC call's data channel (tests/rtc.py)
pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


async def with_tools(connection, events: Events, **session) -> None:
    n = len(events.events)
    await connection.session.update(session={"type": "realtime", "tools": [WEATHER], **session})
    updated = await events.wait_for("session.updated", after=n)
    assert [t.name for t in updated.session.tools] == ["get_weather"]


async def answer(connection, events: Events, call_id: str, output: str) -> None:
    """A function_call_output item (it joins the conversation; nothing starts by itself)."""
    n = len(events.events)
    await connection.conversation.item.create(item={"type": "function_call_output", "call_id": call_id,
                                                    "output": output})
    # the output's own done (an item created just before may have its done still on the way)
    done = await events.wait_for("conversation.item.done", lambda e: e.item.type == "function_call_output", after=n)
    assert done.item.call_id == call_id


async def respond(connection, events: Events, **response) -> tp.Any:
    """response.create (with overrides) and its response.done."""
    n = len(events.events)
    await connection.response.create(response=response or None)
    created = await events.wait_for("response.created", after=n)
    return await events.wait_for("response.done", lambda e: e.response.id == created.response.id, after=n, timeout=60)


def calls_of(done) -> list[tp.Any]:
    return [item for item in done.response.output if item.type == "function_call"]


def call_events(events: Events, item_id: str) -> list[str]:
    """The function-call events of one item, in order (their item is `item` or `item_id`)."""
    def of(e) -> bool:
        return getattr(e, "item_id", None) == item_id or getattr(getattr(e, "item", None), "id", None) == item_id
    return [e.type for e in events.events if of(e)]


async def test_a_call_round_trip_follows_openai_and_the_answer_uses_the_result(cascade_server, llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await with_tools(connection, events, tool_choice="auto")
        n = len(llm_standin.requests)
        created = await text_turn(connection, events, "what is the weather")
        done = await events.wait_for("response.done", timeout=60)
        assert done.response.id == created.response.id and done.response.status == "completed"
        assert llm_standin.bodies[n]["tools"] == [CHAT_WEATHER]          # converted to the chat-completions shape
        message, call = done.response.output
        assert message.type == "message" and message.content[0].transcript == "let me check"
        assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
        assert json.loads(call.arguments) == {"city": "Paris"}
        # the events of the call, in order
        types = call_events(events, call.id)
        assert [t for i, t in enumerate(types) if t not in types[:i]] == list(CALL_EVENTS)
        added = events.of("response.output_item.added")[-1]
        assert added.item.type == "function_call" and added.item.arguments == "" and added.output_index == 1
        deltas = [e for e in events.of("response.function_call_arguments.delta") if e.item_id == call.id]
        assert "".join(e.delta for e in deltas) == call.arguments and all(e.call_id == call.call_id for e in deltas)
        args_done = events.of("response.function_call_arguments.done")[-1]
        assert (args_done.name, args_done.arguments, args_done.output_index) == ("get_weather", call.arguments, 1)
        # the result alone starts nothing: a session.update after it is answered before any response
        await answer(connection, events, call.call_id, "sunny in Paris")
        n_events = len(events.events)
        await connection.session.update(session={"type": "realtime"})
        await events.wait_for("session.updated", after=n_events)
        assert not events.of("response.created")[1:]
        second = await respond(connection, events)
        assert second.response.status == "completed" and not calls_of(second)
        assert second.response.output[0].content[0].transcript == "the tool said sunny in Paris"
        history = await next_request(llm_standin, n + 1)
        assert history[1:] == [
            {"role": "user", "content": "what is the weather"},
            {"role": "assistant", "content": "let me check", "tool_calls": [
                {"id": call.call_id, "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "content": "sunny in Paris", "tool_call_id": call.call_id}]
        assert not events.of("error"), events.of("error")


async def test_two_calls_in_one_response_then_a_chained_call(cascade_server, llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await with_tools(connection, events)
        n = len(llm_standin.requests)
        await text_turn(connection, events, "weather TWO")
        first = await events.wait_for("response.done", timeout=60)
        calls = calls_of(first)
        assert len(calls) == 2 and [i for i, item in enumerate(first.response.output) if item.type == "function_call"] == [1, 2]
        for call in calls:
            await answer(connection, events, call.call_id, "CHAIN more")
        second = await respond(connection, events)           # the results make it call again
        chained = calls_of(second)
        assert len(chained) == 1 and second.response.status == "completed"
        request = await next_request(llm_standin, n + 1)
        assert [m["role"] for m in request][-3:] == ["assistant", "tool", "tool"] and len(request[-3]["tool_calls"]) == 2
        await answer(connection, events, chained[0].call_id, "rain in Paris")
        third = await respond(connection, events)
        assert third.response.output[0].content[0].transcript == "the tool said rain in Paris"
        assert not events.of("error"), events.of("error")


async def test_tool_choice_none_and_per_response_overrides(cascade_server, llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await with_tools(connection, events, tool_choice="none")
        n = len(llm_standin.requests)
        await text_turn(connection, events, "what is the weather")
        done = await events.wait_for("response.done", timeout=60)
        assert not calls_of(done) and "tools" not in llm_standin.bodies[n]   # none: no tools offered
        # one response's own instructions, tools and choice (the session has tool_choice none)
        other = {**WEATHER, "name": "get_time"}
        forced = await respond(connection, events, instructions="Answer in French.", tools=[other],
                               tool_choice={"type": "function", "name": "get_time"})
        body = llm_standin.bodies[n + 1]
        assert body["messages"][0] == {"role": "system", "content": "Answer in French."}
        assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
        assert [c.name for c in calls_of(forced)] == ["get_time"]
        n_events = len(events.events)
        await connection.response.create(response={"tools": [{"type": "mcp", "server_label": "x"}]})
        error = await events.wait_for("error", after=n_events)
        assert error.error.code == "bad_message" and error.error.type == "invalid_request_error"


async def test_a_cancelled_response_keeps_its_call_and_an_unanswered_call_gets_an_error_result(cascade_server,
                                                                                                llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await with_tools(connection, events)
        n = len(llm_standin.requests)
        await text_turn(connection, events, "a long weather report")   # a long preamble: still playing at the call
        ready = await events.wait_for("response.function_call_arguments.done", timeout=60)
        await connection.response.cancel()
        done = await events.wait_for("response.done", timeout=30)
        assert done.response.status == "cancelled"
        [call] = calls_of(done)
        assert call.call_id == ready.call_id and call.status == "completed"
        # the client never answers: the next response still gets a history an OpenAI endpoint takes
        await text_turn(connection, events, "never mind")
        await events.wait_for("response.done", lambda e: e.response.id != done.response.id, timeout=60)
        history = await next_request(llm_standin, n + 1)
        at = next(i for i, m in enumerate(history) if m.get("tool_calls"))
        assert history[at + 1] == {"role": "tool", "tool_call_id": call.call_id,
                                   "content": "error: no result was given before the conversation went on"}
        assert history[-1] == {"role": "user", "content": "never mind"}
        # a late result takes the error's place; a result for no call is refused
        await answer(connection, events, call.call_id, "sunny after all")
        n_events = len(events.events)
        await connection.conversation.item.create(item={"type": "function_call_output", "call_id": "call_nope",
                                                        "output": "x"})
        error = await events.wait_for("error", after=n_events)
        assert error.error.code == "bad_message" and "call_nope" in error.error.message
        await respond(connection, events, tool_choice="none")
        history = llm_standin.requests[-1]
        assert history[at + 1]["content"] == "sunny after all"


async def test_a_replayed_call_and_its_output_join_the_history(cascade_server, llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]})
        await events.wait_for("conversation.item.done")
        n_events = len(events.events)
        await connection.conversation.item.create(item={"type": "function_call", "call_id": "call_old",
                                                        "name": "get_weather", "arguments": '{"city": "Oslo"}'})
        added = await events.wait_for("conversation.item.added", after=n_events)
        assert added.item.type == "function_call" and added.item.call_id == "call_old"
        await answer(connection, events, "call_old", "snow in Oslo")
        n = len(llm_standin.requests)
        await respond(connection, events)
        history = await next_request(llm_standin, n)
        assert history[-2:] == [
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_old", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": "snow in Oslo", "tool_call_id": "call_old"}]
        assert not events.of("error"), events.of("error")


async def test_a_duplex_model_answers_tools_with_unsupported(cascade_server, transport):
    async with realtime(cascade_server, "duplex", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await connection.session.update(session={"type": "realtime", "tools": [WEATHER]})
        error = await events.wait_for("error")
        assert error.error.code == "unsupported" and error.error.type == "invalid_request_error"
        assert error.error.param == "session.tools"
        updated = await events.wait_for("session.updated")
        assert updated.session.tools == []
