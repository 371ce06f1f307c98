"""/v1/realtime as the clients that special-case OpenAI's behaviour need it (issue 23, item 5), with the
official `openai` SDK as the client: OpenAI's error codes, the default settings pipecat and LiveKit send
taken whole, OpenAI model names, items inserted / deleted / retrieved where `previous_item_id` says,
`metadata` echoed and `usage` filled in `response.done`."""

from __future__ import annotations

import json

import pytest

from .rtc import TRANSPORTS
from .test_cascade import next_request
from .test_realtime import realtime, text_turn

# every test runs over the WebSocket and over a WebRTC call's data channel (tests/rtc.py)
pytestmark = pytest.mark.parametrize("transport", TRANSPORTS)


async def send_raw(connection, **event) -> None:
    await connection._connection.send(json.dumps(event))


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def test_the_error_codes_clients_special_case(cascade_server, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await send_raw(connection, type="response.cancel", event_id="c1")
        await send_raw(connection, type="input_audio_buffer.commit", event_id="c2")
        await send_raw(connection, type="conversation.item.retrieve", item_id="nope", event_id="c3")
        await send_raw(connection, type="conversation.item.delete", item_id="nope", event_id="c4")
        await send_raw(connection, type="conversation.item.truncate", item_id="nope", content_index=0,
                       audio_end_ms=0, event_id="c5")
        started = await text_turn(connection, events, "tell me a long story")
        await send_raw(connection, type="response.create", event_id="c6")   # a second one while the first runs
        await events.wait_for("error", lambda e: e.error.event_id == "c6")
        await connection.response.cancel()
        await events.wait_for("response.done", lambda e: e.response.id == started.response.id)
        errors = [(e.error.event_id, e.error.code) for e in events.of("error")]
        assert errors == [("c1", "response_cancel_not_active"), ("c2", "input_audio_buffer_commit_empty"),
                          ("c3", "item_retrieve_invalid_item_id"), ("c4", "item_delete_invalid_item_id"),
                          ("c5", "item_truncate_invalid_item_id"), ("c6", "conversation_already_has_active_response")]


async def test_pipecats_and_livekits_default_settings_are_taken_whole(cascade_server, llm_standin, transport):
    """Each of these ended a pipecat session (every `error` but three codes is fatal to it)."""
    async with realtime(cascade_server, "gpt-realtime", transport=transport) as (connection, events):   # an OpenAI model name
        created = await events.wait_for("session.created")
        assert created.session.model in ("duplex", "cascade")
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await connection.session.update(session={
            "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
            "audio": {"input": {"noise_reduction": {"type": "near_field"},
                                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                                   "silence_duration_ms": 500}},
                      "output": {"voice": "alloy"}}})
        updated = await events.wait_for("session.updated")
        assert not events.of("error"), events.of("error")
        session = updated.session
        assert session.model == "cascade" and session.instructions == "Be brief."
        assert session.audio.output.voice is None                  # alloy: the server's default voice
        assert session.audio.input.noise_reduction is None         # taken, not applied
        assert session.audio.input.transcription.model == "gpt-4o-transcribe"
        assert session.audio.input.turn_detection.type == "server_vad"
        # a system message mid-session joins the context where it is put
        n = len(llm_standin.requests)
        await connection.conversation.item.create(item=user("hello"))
        await connection.conversation.item.create(item={"type": "message", "role": "system",
                                                        "content": [{"type": "input_text", "text": "Speak French."}]})
        added = await events.wait_for("conversation.item.added", lambda e: e.item.role == "system")
        await connection.response.create()
        request = await next_request(llm_standin, n)
        assert request[-2:] == [{"role": "user", "content": "hello"}, {"role": "system", "content": "Speak French."}]
        assert added.item.content[0].text == "Speak French."
        await events.wait_for("response.done")
        assert not events.of("error"), events.of("error")


async def test_items_go_where_previous_item_id_says_and_can_be_deleted_and_retrieved(cascade_server, llm_standin, transport):
    """What LiveKit's plugin does: its chat context as items (`previous_item_id` `root` first), replies found
    by the `metadata` of its response.create, unplayed items deleted."""
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await connection.conversation.item.create(item={**user("second"), "id": "item_b"}, previous_item_id="root")
        await connection.conversation.item.create(item={**user("first"), "id": "item_a"}, previous_item_id="root")
        await connection.conversation.item.create(item={**user("third"), "id": "item_c"}, previous_item_id="item_b")
        await events.wait_for("conversation.item.added", lambda e: e.item.id == "item_c")
        added = {e.item.id: e.previous_item_id for e in events.of("conversation.item.added")}
        assert added == {"item_b": None, "item_a": None, "item_c": "item_b"}
        n = len(llm_standin.requests)
        await connection.response.create(response={"metadata": {"client_event_id": "gen_1"}})
        created = await events.wait_for("response.created")
        assert created.response.metadata == {"client_event_id": "gen_1"}
        request = await next_request(llm_standin, n)
        assert [m["content"] for m in request if m["role"] == "user"] == ["first", "second", "third"]
        done = await events.wait_for("response.done", timeout=60)
        assert done.response.metadata == {"client_event_id": "gen_1"}
        usage = done.response.usage
        assert usage is not None and usage.output_token_details.audio_tokens == 0
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        reply = done.response.output[0]
        assert (await events.wait_for("conversation.item.done", lambda e: e.item.id == reply.id)).item.status == "completed"
        # retrieve, then delete the reply and one user item: the next request has neither
        await send_raw(connection, type="conversation.item.retrieve", item_id=reply.id)
        retrieved = await events.wait_for("conversation.item.retrieved")
        assert retrieved.item.id == reply.id and retrieved.item.content[0].transcript == reply.content[0].transcript
        for item_id in (reply.id, "item_b"):
            await connection.conversation.item.delete(item_id=item_id)
            await events.wait_for("conversation.item.deleted", lambda e, i=item_id: e.item_id == i)
        await text_turn(connection, events, "fourth")
        request = await next_request(llm_standin, n + 1)
        assert [m["role"] for m in request] == ["system", "user", "user", "user"]
        assert [m["content"] for m in request[1:]] == ["first", "third", "fourth"]
        assert not events.of("error"), events.of("error")
