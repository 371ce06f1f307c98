"""Recordings read back and replayed (`duplex replay`), in process: the app around a fake engine whose
output depends only on how many frames it has consumed (so a faithful replay reproduces it exactly).

- an `/api/chat` recording keeps the model's text pieces as text, exactly as sent (never parsed as
  JSON: `" 2"` stays `" 2"`), and replays through `/ws` bit for bit, text included;
- the user's track holds what the model consumed: frames the engine dropped from a full queue are logged
  as `drop` events, not kept, so the replay's answers do not shift by a frame;
- assistant frames the original server never sent (in flight at `stop`) are not compared with silence,
  and a recording with nothing to compare is an error, not "reproduces bit for bit".
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import sphn
from aiohttp import WSMsgType

from duplex.audio import FRAME_SAMPLES
from duplex.client.replay import ReplayError, load_recording
from duplex.client.replay import replay as replay_through
from duplex.engines.base import AssistantAudio, AssistantText, Sink, UserFrame
from duplex.server.recording import RecordingStore

from .test_recording import folders, recording
from .test_server_inprocess import FakeEngine, FakeStream, pcm16_message, receive_json

# Text pieces as a model sends them; several are valid JSON that is not a protocol message.
PIECES = [" 2", " null", "{}", " hi", " true", '"q"', "[1]", " -0"]


def assistant_frame(k: int) -> np.ndarray:
    """The k-th frame the fake model says, whatever it heard."""
    return (0.25 * np.sin(np.arange(FRAME_SAMPLES) * (k + 1) / 50.0)).astype(np.float32)


class TalkingStream(FakeStream):
    """Answers the k-th consumed frame with frame k's audio, then a text piece (after it, so that a client
    that has the k-th piece knows the k-th audio frame was sent before it)."""

    def push_audio(self, frame: UserFrame) -> None:
        k = self.pushed
        self.pushed += 1
        self.sink(AssistantAudio(assistant_frame(k), heard=frame.pcm))
        if self.engine.text:
            self.sink(AssistantText(PIECES[k % len(PIECES)]))


class TalkingEngine(FakeEngine):
    def __init__(self, text: bool = True):
        super().__init__()
        self.text = text

    def open(self, config: dict, sink: Sink) -> TalkingStream:
        self.active += 1
        stream = TalkingStream(self, sink)
        self.streams.append(stream)
        return stream


async def api_chat_conversation(client, frames: int) -> str:
    """Sends `frames` frames of Opus to /api/chat, then a ping: once its answer came, every answer to the
    audio was sent before it (one receive loop, one outbox, in order). Returns the text received."""
    ws = await client.ws_connect("/api/chat?audio_temperature=0&text_temperature=0")
    assert (await ws.receive(timeout=2.0)).data == b"\x00"
    writer = sphn.OpusStreamWriter(24000)
    pcm = np.random.default_rng(0).uniform(-0.3, 0.3, frames * FRAME_SAMPLES).astype(np.float32)
    for k in range(frames):
        page = writer.append_pcm(pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES])
        if page:
            await ws.send_bytes(b"\x01" + page)
    await ws.send_bytes(b"\x06")
    pieces: list[str] = []
    while True:
        msg = await ws.receive(timeout=2.0)
        assert msg.type == WSMsgType.BINARY, msg
        if msg.data[0] == 0x06:
            break
        if msg.data[0] == 0x02:
            pieces.append(msg.data[1:].decode())
    await ws.close()
    return "".join(pieces)


async def test_an_api_chat_recording_keeps_its_text_pieces_and_replays_through_ws(tmp_path):
    engine = TalkingEngine()
    async with recording(tmp_path, engine) as (client, store):
        received = await api_chat_conversation(client, 16)
        await store.synced()
        [folder] = folders(store)
        rec = load_recording(folder)
        consumed = engine.streams[0].pushed
        said = "".join(PIECES[k % len(PIECES)] for k in range(consumed))
        assert consumed >= len(PIECES) and received == said
        assert rec.assistant_text() == said, "the recorded text is not what the client was sent"
        kept = [e for e in rec.events if e.get("dir") == "out" and e.get("kind") == "text"]
        assert [e.get("text") for e in kept][:len(PIECES)] == PIECES and not any("msg" in e for e in kept)
        # the replay: through /ws, the recorded seed and sampling, the user's track as pcm16
        outcome = await replay_through(rec, str(client.make_url("/")), fast=True, timeout=10.0)
        assert outcome.exact, outcome.lines
        assert outcome.lines[-1].startswith(f"reproduces bit for bit: {consumed} frames"), outcome.lines


class QueueingStream(FakeStream):
    """A model with an input queue of `engine.max_queue` frames (None: unbounded; the oldest dropped past it)
    that steps every 4th frame pushed, consuming the queue; its answer depends on what it heard."""

    def __init__(self, engine: "QueueingEngine", sink: Sink):
        super().__init__(engine, sink)
        self.max_queue = engine.max_queue
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.dropped = 0

    @property
    def frames_dropped(self) -> int:
        return self.dropped

    def push_audio(self, frame: UserFrame) -> None:
        self.pushed += 1
        self.queue.append(frame.pcm)
        if self.max_queue is not None and len(self.queue) > self.max_queue:
            self.queue.popleft()
            self.dropped += 1
        if self.pushed % 4 == 0:
            while self.queue:
                heard = self.queue.popleft()
                self.sink(AssistantAudio(0.5 * heard, heard=heard))


class QueueingEngine(FakeEngine):
    max_queue: int | None = None

    def open(self, config: dict, sink: Sink) -> QueueingStream:
        self.active += 1
        stream = QueueingStream(self, sink)
        self.streams.append(stream)
        return stream


async def test_frames_dropped_unconsumed_are_not_recorded_so_the_replay_does_not_shift(tmp_path):
    engine = QueueingEngine()
    engine.max_queue = 2
    async with recording(tmp_path, engine) as (client, store):
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        await ws.send_json({"type": "start", "mode": "duplex"})
        await receive_json(ws)
        message, _ = pcm16_message(16 * FRAME_SAMPLES, seed=4)
        await ws.send_bytes(message)            # 16 frames at once: 8 consumed, 8 dropped from the queue
        for _ in range(8):
            assert (await ws.receive(timeout=2.0)).type == WSMsgType.BINARY
        await ws.send_json({"type": "stop"})
        while (await receive_json(ws)).get("status") != "stopped":
            pass
        await ws.close()
        await store.synced()
        assert engine.streams[0].dropped == 8
        [folder] = folders(store)
        rec = load_recording(folder)
        assert len(rec.frame_starts) == 8 and rec.dropped_input() == 8
        engine.max_queue = None                 # the replay's server keeps up
        outcome = await replay_through(rec, str(client.make_url("/")), fast=True, timeout=10.0)
        assert outcome.exact, outcome.lines
        assert "reproduces bit for bit: 8 frames of assistant audio" in outcome.lines[-1]
        assert any("dropped 8 user frames unconsumed" in line for line in outcome.lines)


async def recorded(tmp_path, frames: int, sent: int) -> "object":
    """A recording made through the real recorder: `frames` user frames consumed and answered, the first
    `sent` answers sent (the rest in flight when `stop` cleared the queue: never sent, so never recorded)."""
    store = RecordingStore(tmp_path / "made")
    await store.start()
    recorder = store.for_socket("ws")
    recorder.begin("made", "duplex", {"temperature": 0, "text_temperature": 0, "seed": 1})
    for k in range(frames):
        recorder.user_audio(np.full(FRAME_SAMPLES, 0.01 * k, dtype=np.float32))
        receipt = recorder.assistant_audio(FRAME_SAMPLES, frame_locked=True)
        assert receipt is not None
        if k < sent:
            receipt(assistant_frame(k), b"")
    recorder.end("stop")
    await store.synced()
    await store.stop()
    [folder] = folders(store)
    return load_recording(folder)


async def test_frames_in_flight_at_stop_are_not_compared_and_nothing_to_compare_is_an_error(tmp_path):
    async with recording(tmp_path, TalkingEngine(text=False)) as (client, _):
        url = str(client.make_url("/"))
        rec = await recorded(tmp_path, frames=6, sent=4)
        outcome = await replay_through(rec, url, fast=True, timeout=10.0)
        assert outcome.exact, outcome.lines
        assert outcome.lines[-1].startswith("reproduces bit for bit: 4 frames of assistant audio"), outcome.lines
        assert any(line.startswith("2 frames the original server never sent") for line in outcome.lines)
        empty = await recorded(tmp_path / "empty", frames=0, sent=0)
        with pytest.raises(ReplayError, match="nothing to compare"):
            await replay_through(empty, url, fast=True, timeout=10.0)
