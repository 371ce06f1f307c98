"""Recordings read back and replayed (`duplex replay`), in process: the app around a fake engine whose
output depends only on how many frames it has consumed (so a faithful replay reproduces it exactly).

- an `/api/chat` recording keeps the model's text pieces as text, exactly as sent (never parsed as
  JSON: `" 2"` stays `" 2"`), and replays through `/ws` bit for bit, text included.
"""

from __future__ import annotations

import numpy as np
import sphn
from aiohttp import WSMsgType

from duplex.audio import FRAME_SAMPLES
from duplex.client.replay import load_recording
from duplex.client.replay import replay as replay_through
from duplex.engines.base import AssistantAudio, AssistantText, Sink, UserFrame

from .test_recording import folders, recording
from .test_server_inprocess import FakeEngine, FakeStream

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
        self.sink(AssistantAudio(assistant_frame(k)))
        self.sink(AssistantText(PIECES[k % len(PIECES)]))


class TalkingEngine(FakeEngine):
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
