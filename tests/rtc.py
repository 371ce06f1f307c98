"""The Realtime tests' two transports: the `openai` SDK's WebSocket, and a WebRTC call (aiortc both sides).

`realtime(server, model, transport=...)` yields `(connection, events)` alike for both: `connection` has the
SDK's typed senders (`connection.session.update(...)`, `.response.create()`, `.input_audio_buffer.append`, …)
and `events` every server event parsed into the SDK's models, so one test body runs over either. Over
WebRTC the SDK's own resource classes send on the `oai-events` data channel (`DataChannelConnection`), and
the assistant's audio arrives on the track (`RealtimeCallClient.audio`) instead of
`response.output_audio.delta`: `wait_response_audio` waits for a response's audio on either.
"""

from __future__ import annotations

import contextlib
import json
import typing as tp

from openai._models import construct_type_unchecked
from openai._utils import async_maybe_transform
from openai.resources.realtime.realtime import (AsyncRealtimeConversationResource, AsyncRealtimeInputAudioBufferResource,
                                                AsyncRealtimeOutputAudioBufferResource, AsyncRealtimeResponseResource,
                                                AsyncRealtimeSessionResource)
from openai.types.realtime import RealtimeClientEventParam, RealtimeServerEvent

from duplex.audio import FRAME_MS
from duplex.client.webrtc import RealtimeCallClient

TRANSPORTS = ("websocket", "webrtc")
WIRE_FRAME_MS = 20   # one RTP packet of the call's track


class _Raw:
    """`connection._connection.send(data)` as on the SDK's websocket: a frame as it is (text or binary)."""

    def __init__(self, call: RealtimeCallClient):
        self.call = call

    async def send(self, data: str | bytes) -> None:
        self.call.send_raw(data)


class DataChannelConnection:
    """The SDK's `AsyncRealtimeConnection` surface over a WebRTC call's data channel."""

    def __init__(self, call: RealtimeCallClient):
        self.call = call
        self._connection = _Raw(call)
        self.session = AsyncRealtimeSessionResource(self)            # type: ignore[arg-type]
        self.response = AsyncRealtimeResponseResource(self)          # type: ignore[arg-type]
        self.input_audio_buffer = AsyncRealtimeInputAudioBufferResource(self)    # type: ignore[arg-type]
        self.conversation = AsyncRealtimeConversationResource(self)  # type: ignore[arg-type]
        self.output_audio_buffer = AsyncRealtimeOutputAudioBufferResource(self)  # type: ignore[arg-type]

    async def send(self, event: tp.Any) -> None:
        """As the SDK's `send`: the typed params transformed to the wire shape, as JSON text."""
        self.call.send_raw(json.dumps(await async_maybe_transform(event, RealtimeClientEventParam)))

    async def __aiter__(self) -> tp.AsyncIterator[tp.Any]:
        async for event in self.call.stream():
            event = {k: v for k, v in event.items() if k != "received_at"}
            yield construct_type_unchecked(value=event, type_=tp.cast(tp.Any, RealtimeServerEvent))


@contextlib.asynccontextmanager
async def webrtc_connection(server, model: str, api_key: str | None) -> tp.AsyncIterator[DataChannelConnection]:
    # the track only receives: the tests send the user's audio in appends (a microphone track would add its own)
    call = await RealtimeCallClient.connect(server.http_url, token=api_key, model=model, send_audio=False)
    try:
        yield DataChannelConnection(call)
    finally:
        await call.close()


def call_of(connection: tp.Any) -> RealtimeCallClient | None:
    return connection.call if isinstance(connection, DataChannelConnection) else None


async def wait_response_audio(connection: tp.Any, events: tp.Any, response_id: str, frames: int = 1,
                              timeout: float = 30.0) -> None:
    """Until `frames` 80 ms frames of the response's audio have come: its `response.output_audio.delta`s over
    the WebSocket; over WebRTC its `output_audio_buffer.started`, then that much audio on the track."""
    call = call_of(connection)
    if call is None:
        await events.wait_for("response.output_audio.delta", lambda e: sum(
            1 for d in events.of("response.output_audio.delta") if d.response_id == response_id) >= frames,
            timeout=timeout)
        return
    await events.wait_for("output_audio_buffer.started", lambda e: e.response_id == response_id, timeout=timeout)
    started = next(e for e in call.events if e["type"] == "output_audio_buffer.started"
                   and e["response_id"] == response_id)["received_at"]
    pieces = frames * FRAME_MS // WIRE_FRAME_MS
    await call.wait_until(lambda: sum(1 for a in call.audio if a.received_at >= started) >= pieces, timeout,
                          f"{frames} frames of audio")

