"""/v1/realtime with the official `openai` SDK as the client (its realtime connection pointed at the
local server with `websocket_base_url`): cascade turns typed and spoken, duplex audio both ways,
response.cancel and conversation.item.truncate during speech, and bad events. The tiny models' words
are random; the protocol is not. The event tests run over a WebRTC call's data channel too (`transport`,
tests/rtc.py: the same SDK senders and event models, aiortc both sides)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import typing as tp

import aiohttp
import numpy as np
import pytest
from openai import AsyncOpenAI

from duplex.audio import FRAME_MS, FRAME_SAMPLES, float_to_pcm16
from duplex.server.protocols.realtime import parse_session_update

from .conftest import espeak
from .llm_standin import reply_for
from .rtc import TRANSPORTS, call_of, wait_response_audio, webrtc_connection
from .test_cascade import most_words_heard, next_request


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, how are you?", tmp_path_factory.mktemp("rt") / "h.wav")


def b64(pcm: np.ndarray) -> str:
    return base64.b64encode(float_to_pcm16(pcm)).decode()


class Events:
    """Every server event of one connection, in order, read by a background task; `wait_for` waits on
    a condition (no polling)."""

    def __init__(self, connection: tp.Any):
        self.connection = connection
        self.events: list[tp.Any] = []
        self.changed = asyncio.Condition()
        self.closed = False
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.connection:
                async with self.changed:
                    self.events.append(event)
                    self.changed.notify_all()
        finally:
            async with self.changed:
                self.closed = True
                self.changed.notify_all()

    def of(self, type_: str) -> list[tp.Any]:
        return [e for e in self.events if e.type == type_]

    async def wait_for(self, type_: str, predicate: tp.Callable[[tp.Any], bool] = lambda e: True,
                       after: int = 0, timeout: float = 30.0) -> tp.Any:
        """The first event of `type_` from index `after` on that satisfies `predicate`."""
        def found() -> tp.Any:
            return next((e for e in self.events[after:] if e.type == type_ and predicate(e)), None)
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: found() is not None or self.closed), timeout)
        event = found()
        assert event is not None, f"connection closed before {type_}; got {[e.type for e in self.events]}"
        return event

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


@contextlib.asynccontextmanager
async def realtime(server, model: str, api_key: str = "unused",
                   transport: str = "websocket") -> tp.AsyncIterator[tuple[tp.Any, Events]]:
    connect: tp.Any
    if transport == "webrtc":
        connect = webrtc_connection(server, model, api_key)
    else:
        client = AsyncOpenAI(api_key=api_key, websocket_base_url=server.http_url.replace("http://", "ws://") + "/v1")
        connect = client.realtime.connect(model=model)
    async with connect as connection:
        events = Events(connection)
        try:
            yield connection, events
        finally:
            await events.close()


async def text_turn(connection, events: Events, text: str) -> tp.Any:
    """A user message and a response.create; returns the response.created event."""
    n = len(events.events)
    await connection.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await events.wait_for("conversation.item.done", after=n)
    await connection.response.create()
    return await events.wait_for("response.created", after=n)


def response_audio(events: Events, response_id: str) -> list[tp.Any]:
    return [e for e in events.of("response.output_audio.delta") if e.response_id == response_id]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_typed_turn_in_cascade_is_answered_with_audio_and_its_transcript(cascade_server, llm_standin,
                                                                                 transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        created = await events.wait_for("session.created")
        assert created.session.model == "cascade"
        assert created.session.audio.output.format.rate == 24000
        await connection.session.update(session={"type": "realtime", "instructions": "You are terse."})
        updated = await events.wait_for("session.updated")
        assert updated.session.instructions == "You are terse."
        started = await text_turn(connection, events, "hello there")
        response_id = started.response.id
        done = await events.wait_for("response.done", timeout=60)
        assert done.response.id == response_id and done.response.status == "completed"
        deltas = [e.delta for e in events.of("response.output_audio_transcript.delta")]
        transcript = (await events.wait_for("response.output_audio_transcript.done")).transcript
        assert "".join(deltas).strip() == transcript == reply_for(2, long=False)   # system + user message
        call = call_of(connection)
        if call is None:
            audio = response_audio(events, response_id)
            assert len(audio) > 10
            assert all(len(base64.b64decode(e.delta)) == 2 * FRAME_SAMPLES for e in audio)   # pcm16, 80 ms each
        else:   # on the track, between output_audio_buffer.started and .stopped (after response.done)
            assert not events.of("response.output_audio.delta")
            stopped = await events.wait_for("output_audio_buffer.stopped", lambda e: e.response_id == response_id)
            assert events.events.index(stopped) > events.events.index(done)
            started = next(e for e in call.events if e["type"] == "output_audio_buffer.started")["received_at"]
            heard = np.concatenate([a.pcm for a in call.audio if a.received_at >= started])
            assert len(heard) > 10 * FRAME_SAMPLES and np.abs(heard).max() > 0.01   # the TTS's babble, not silence
        item = done.response.output[0]
        assert item.role == "assistant" and item.content[0].transcript == transcript
        assert llm_standin.requests[-1][0] == {"role": "system", "content": "You are terse."}
        # every event of the response comes between its response.created and its response.done
        types = [e.type for e in events.events]
        first, last = types.index("response.created"), types.index("response.done")
        assert all(first < i < last for i, e in enumerate(events.events) if getattr(e, "response_id", None)
                   and not e.type.startswith("output_audio_buffer."))
        assert not events.of("error"), events.of("error")


async def send_audio(connection, pcm: np.ndarray, chunk_frames: int = 3) -> None:
    """pcm16 in appends of `chunk_frames` 80 ms frames, as fast as the socket takes them."""
    step = chunk_frames * FRAME_SAMPLES
    for start in range(0, len(pcm), step):
        await connection.input_audio_buffer.append(audio=b64(pcm[start:start + step]))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_spoken_turn_in_cascade_is_detected_transcribed_and_answered(cascade_server, hello, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await connection.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "gpt-4o-transcribe"},
            "turn_detection": {"type": "server_vad", "create_response": True}}}})
        updated = await events.wait_for("session.updated")
        assert updated.session.audio.input.transcription is not None
        silence = np.zeros(FRAME_SAMPLES * 15, dtype=np.float32)
        await send_audio(connection, np.concatenate([silence[:4000], hello, silence]))
        speech = await events.wait_for("input_audio_buffer.speech_started")
        stopped = await events.wait_for("input_audio_buffer.speech_stopped")
        committed = await events.wait_for("input_audio_buffer.committed")
        assert speech.item_id == stopped.item_id == committed.item_id
        assert stopped.audio_end_ms > speech.audio_start_ms >= 0
        user = await events.wait_for("conversation.item.input_audio_transcription.completed")
        assert user.item_id == committed.item_id and user.transcript   # the tiny STT babbles, but it transcribes
        deltas = [e.delta for e in events.of("conversation.item.input_audio_transcription.delta")]
        assert "".join(deltas).strip() == user.transcript
        created = await events.wait_for("response.created")
        rid = created.response.id
        # answered with audio and its transcript (the typed test plays a reply to its end; here 5 frames do)
        await wait_response_audio(connection, events, rid, frames=5)
        await connection.response.cancel()
        done = await events.wait_for("response.done", lambda e: e.response.id == rid)
        assert done.response.status == "cancelled"
        transcript = done.response.output[0].content[0].transcript
        assert transcript and reply_for(2, long=False).startswith(transcript)   # system prompt + the user turn
        assert not events.of("error"), events.of("error")


async def test_duplex_streams_audio_both_ways_in_responses_and_needs_the_token(small_server, speech):
    async with realtime(small_server, "duplex", api_key="wrong") as (connection, events):
        error = await events.wait_for("error")
        assert error.error.code == "unauthorized"
    async with realtime(small_server, "duplex", api_key="s3cret") as (connection, events):
        created = await events.wait_for("session.created")
        assert created.session.model == "duplex"
        # `instructions` needs a persona model, a transcript needs a recogniser: errors, the session lives on
        await connection.session.update(session={"type": "realtime", "instructions": "be brief",
                                                  "audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        updated = await events.wait_for("session.updated")
        params = {e.error.param for e in events.of("error")}
        assert params == {"session.instructions", "session.audio.input.transcription"}, events.of("error")
        assert updated.session.audio.input.transcription is None and updated.session.instructions == ""
        frames = len(speech) // FRAME_SAMPLES
        await send_audio(connection, speech[: frames * FRAME_SAMPLES], chunk_frames=1)
        await events.wait_for("input_audio_buffer.speech_started")
        created_response = await events.wait_for("response.created", timeout=30)
        response_id = created_response.response.id
        await events.wait_for("response.output_audio.delta", lambda e: e.response_id == response_id, timeout=30)
        # the model speaks while it listens; response.cancel forces it silent and ends the response
        await connection.response.cancel()
        done = await events.wait_for("response.done", lambda e: e.response.id == response_id)
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "client_cancelled"
        opened = {e.response.id for e in events.of("response.created")}
        audio = events.of("response.output_audio.delta")
        assert all(e.response_id in opened for e in audio)
        assert len(audio) <= frames   # one frame out per frame in at most, sent only inside responses
        await connection.response.create()
        error = await events.wait_for("error", lambda e: e.error.param is None and e.error.code == "unsupported")
        assert "duplex" in error.error.message


def assistant_messages(request: list[dict]) -> list[str]:
    return [m["content"] for m in request if m["role"] == "assistant"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_and_truncate_during_speech_keep_only_what_was_heard(cascade_server, llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        # 1. response.cancel while the assistant speaks: the response ends `cancelled`
        first = (await text_turn(connection, events, "tell me a long story")).response.id
        await wait_response_audio(connection, events, first)
        await connection.response.cancel()
        done = await events.wait_for("response.done", lambda e: e.response.id == first)
        assert (done.response.status, done.response.status_details.reason) == ("cancelled", "client_cancelled")
        assert done.response.output[0].status == "incomplete"
        # 2. truncate at 400 ms while ~3 s have been sent: the history keeps the words started by 400 ms
        second = await text_turn(connection, events, "tell me a long story again")
        added = await events.wait_for("response.output_item.added", lambda e: e.response_id == second.response.id)
        item_id = added.item.id
        sent = 36   # frames, ~3 s: about 10 words played
        await wait_response_audio(connection, events, second.response.id, frames=sent)
        await connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=400)
        truncated = await events.wait_for("conversation.item.truncated")
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 400)
        done = await events.wait_for("response.done", lambda e: e.response.id == second.response.id)
        assert done.response.status == "cancelled"
        # 3. a finished reply truncated at 0 ms leaves nothing of itself in the context
        n = len(llm_standin.requests)
        third = (await text_turn(connection, events, "and a short one")).response.id
        done = await events.wait_for("response.done", lambda e: e.response.id == third, timeout=60)
        assert done.response.status == "completed"
        request = await next_request(llm_standin, n)
        after = request.index({"role": "user", "content": "tell me a long story again"}) + 1
        heard_in_second = [m["content"] for m in request[after:] if m["role"] == "assistant"]
        third_reply = done.response.output[0].content[0].transcript
        await connection.conversation.item.truncate(item_id=done.response.output[0].id, content_index=0, audio_end_ms=0)
        await events.wait_for("conversation.item.truncated", lambda e: e.item_id == done.response.output[0].id)
        await text_turn(connection, events, "last one")
        last = await next_request(llm_standin, n + 1)
        full_long = reply_for(2, long=True).split()
        for message in heard_in_second:   # absent when no word had started by 400 ms
            words = message.split()
            assert words == full_long[: len(words)] and len(words) <= most_words_heard(400 // FRAME_MS), message
        assert third_reply and third_reply not in assistant_messages(last)   # the truncated third reply is gone
        assert [m["content"] for m in last if m["role"] == "user"][-2:] == ["and a short one", "last one"]
        assert not events.of("error"), events.of("error")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_events_each_get_an_error_naming_them_and_the_connection_lives(cascade_server, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        raw = connection._connection   # the SDK's websocket: a malformed frame cannot go through its typed send
        bad: list[tuple[str | bytes, str, str | None]] = [
            ("{not json", "bad_message", None),
            (json.dumps({"event_id": "e1", "type": "no.such.event"}), "unknown_type", "e1"),
            (json.dumps({"event_id": "e2", "type": "output_audio_buffer.clear"}), "unsupported", "e2"),
            (json.dumps({"event_id": "e3", "type": "input_audio_buffer.append", "audio": "%%%"}), "bad_audio", "e3"),
            (json.dumps({"event_id": "e4", "type": "input_audio_buffer.append",
                         "audio": base64.b64encode(b"abc").decode()}), "bad_audio", "e4"),   # odd byte count
            (json.dumps({"event_id": "e5", "type": "session.update", "session": {
                "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}}), "bad_audio", "e5"),
            (json.dumps({"event_id": "e6", "type": "input_audio_buffer.append", "audio": "A" * 600_000}),
             "too_large", None),   # refused before it is parsed
            (json.dumps({"event_id": "e7", "type": "response.cancel"}), "response_cancel_not_active", "e7"),
            (json.dumps({"event_id": "e8", "type": "conversation.item.truncate", "item_id": "nope",
                         "content_index": 0, "audio_end_ms": 10}), "item_truncate_invalid_item_id", "e8"),
            (json.dumps({"event_id": "e9", "type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty", "e9"),
            (b"\x01binary", "bad_message", None),
        ]
        if transport == "webrtc":
            # output_audio_buffer.clear is WebRTC's own (nothing playing: nothing to say); a message over the
            # data channel's 256 KiB cannot be sent at all (aiortc's limit, from the server's SDP)
            bad = [b for b in bad if not any(f'"event_id": "{e}"' in str(b[0]) for e in ("e2", "e6"))]
        for message, _, _ in bad:
            await raw.send(message)
        await connection.session.update(session={"type": "realtime", "instructions": "still here"}, event_id="ok")
        await events.wait_for("session.updated", lambda e: e.session.instructions == "still here")
        errors = [(e.error.code, e.error.event_id) for e in events.of("error")]
        assert errors == [(code, event_id) for _, code, event_id in bad], errors
        assert all(e.error.type == "invalid_request_error" and e.error.message for e in events.of("error"))
        params = {e.error.event_id: e.error.param for e in events.of("error")}
        assert params["e5"] == "session.audio.input.format" and params["e7"] == "response_id", params


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_without_turn_detection_the_client_commits_and_asks_for_the_response(cascade_server, hello,
                                                                                    llm_standin, transport):
    async with realtime(cascade_server, "cascade", transport=transport) as (connection, events):
        await events.wait_for("session.created")
        await connection.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1"}, "turn_detection": None}}})
        assert (await events.wait_for("session.updated")).session.audio.input.turn_detection is None
        silence = np.zeros(FRAME_SAMPLES * 15, dtype=np.float32)
        await send_audio(connection, np.concatenate([silence[:4000], hello, silence]))
        user = await events.wait_for("conversation.item.input_audio_transcription.completed")
        n = len(llm_standin.requests)
        await connection.input_audio_buffer.commit()
        committed = await events.wait_for("input_audio_buffer.committed")
        assert committed.item_id == user.item_id
        assert not events.of("input_audio_buffer.speech_started") and not events.of("response.created")
        await connection.response.create()
        created = await events.wait_for("response.created")
        request = await next_request(llm_standin, n)
        assert request[-1] == {"role": "user", "content": user.transcript}
        await wait_response_audio(connection, events, created.response.id)
        await connection.response.cancel()
        done = await events.wait_for("response.done")
        assert done.response.status == "cancelled"
        assert not events.of("error"), events.of("error")


async def test_a_browser_gives_the_key_as_a_subprotocol(small_server):
    """What OpenAI's browser clients do (a browser cannot set headers): the server must echo `realtime`."""
    url = small_server.http_url + "/v1/realtime?model=duplex"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, protocols=("realtime", "openai-insecure-api-key.s3cret")) as ws:
            assert ws.protocol == "realtime"
            assert json.loads(await ws.receive_str(timeout=10))["type"] == "session.created"
        async with http.ws_connect(url, protocols=("realtime", "openai-insecure-api-key.wrong")) as ws:
            error = json.loads(await ws.receive_str(timeout=10))
            assert (error["type"], error["error"]["code"]) == ("error", "unauthorized")
            assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008


def test_the_session_update_livekit_sends_by_default_is_taken_whole():
    """LiveKit Agents' default `session.update` (its plugin's defaults, GA shape): nothing refused."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    update = parse_session_update({
        "type": "realtime", "model": "cascade", "output_modalities": ["audio"], "instructions": "Be brief.",
        "audio": {"input": {"format": pcm, "noise_reduction": None, "transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": {"type": "semantic_vad", "create_response": True, "eagerness": "medium",
                                               "interrupt_response": True}},
                  "output": {"format": pcm, "speed": None, "voice": "marin"}},
        "max_output_tokens": "inf", "tool_choice": "auto", "tracing": None}, ("duplex", "cascade", "auto"))
    assert update.refused == []
    assert update.changes == {"model": "cascade", "instructions": "Be brief.", "voice": "marin", "tool_choice": "auto",
                              "transcription": {"model": "gpt-4o-mini-transcribe"},
                              "turn_detection": {"type": "semantic_vad", "create_response": True,
                                                 "interrupt_response": True}}
    refused = parse_session_update({"type": "realtime", "tools": [{"type": "function", "name": "f"}], "temperature": 1,
                                    "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 900}}}},
                                   ("cascade", "auto")).refused
    assert [(param, code) for param, code, _ in refused] == [   # tools: the session's to judge (functions.py)
        ("session.temperature", "bad_message"),
        ("session.audio.input.turn_detection.idle_timeout_ms", "unsupported")]
