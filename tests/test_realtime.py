"""/v1/realtime with the official `openai` SDK as the client (its realtime connection pointed at the
local server with `websocket_base_url`): cascade turns typed and spoken, duplex audio both ways,
response.cancel and conversation.item.truncate during speech, and bad events. The tiny models' words
are random; the protocol is not."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import typing as tp

import numpy as np
import pytest
from openai import AsyncOpenAI

from duplex.audio import FRAME_MS, FRAME_SAMPLES, float_to_pcm16

from .conftest import espeak
from .llm_standin import reply_for
from .test_cascade import most_words_heard, next_request


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, what is the weather like today?", tmp_path_factory.mktemp("rt") / "h.wav")


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
async def realtime(server, model: str, api_key: str = "unused") -> tp.AsyncIterator[tuple[tp.Any, Events]]:
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=server.http_url.replace("http://", "ws://") + "/v1")
    async with client.realtime.connect(model=model) as connection:
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


async def test_a_typed_turn_in_cascade_is_answered_with_audio_and_its_transcript(cascade_server, llm_standin):
    async with realtime(cascade_server, "cascade") as (connection, events):
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
        audio = response_audio(events, response_id)
        assert len(audio) > 10
        assert all(len(base64.b64decode(e.delta)) == 2 * FRAME_SAMPLES for e in audio)   # pcm16, 80 ms each
        item = done.response.output[0]
        assert item.role == "assistant" and item.content[0].transcript == transcript
        assert llm_standin.requests[-1][0] == {"role": "system", "content": "You are terse."}
        # every event of the response comes between its response.created and its response.done
        types = [e.type for e in events.events]
        first, last = types.index("response.created"), types.index("response.done")
        assert all(first < i < last for i, e in enumerate(events.events) if getattr(e, "response_id", None))
        assert not events.of("error"), events.of("error")
