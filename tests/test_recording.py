"""Recordings (`--record DIR`) in-process: the app around a fake echo engine and a real RecordingStore.

Files are read back with the stdlib `wave` module and sphn (and `sox` in the end-to-end tests): the stereo WAV holds the
user's audio on the left exactly as sent (pcm16), the assistant's delivered audio on the right at the
sample offset of the user frame it answers; cut audio is absent; every protocol message is in
events.jsonl. Each test waits for the writer with `store.synced()` (an event, not a sleep).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import typing as tp
import wave
from pathlib import Path

import numpy as np
import sphn
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from duplex.audio import FRAME_SAMPLES, Pcm16Decoder, float_to_pcm16
from duplex.client.replay import Recording
from duplex.engines.base import AssistantAudio, AssistantTurnEnded, Sink, UserFrame
from duplex.server.app import create_app
from duplex.server.recording import RecordingStore
from duplex.server.settings import ServerSettings

from .test_server_inprocess import FakeEngine, FakeStream, metric, pcm16_message, receive_json


@contextlib.asynccontextmanager
async def recording(tmp_path: Path, *engines: FakeEngine, token: str | None = None, **store_args):
    store = RecordingStore(tmp_path / "rec", **store_args)
    engines = engines or (FakeEngine(),)
    app = create_app({e.name: e for e in engines}, ServerSettings(token=token, static_dir=None), recordings=store)
    async with TestClient(TestServer(app)) as client:
        yield client, store


def folders(store: RecordingStore) -> list[Path]:
    return sorted(p for p in store.directory.iterdir() if p.is_dir())


def read_recording(folder: Path) -> tuple[np.ndarray, list[dict], dict]:
    """(int16 [samples, 2], events, meta), the WAV read by the stdlib reader."""
    with wave.open(str(folder / "audio.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 24000)
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    return audio, events, json.loads((folder / "meta.json").read_text())


def wire_types(events: list[dict], direction: str) -> list[str]:
    return [e["msg"]["type"] for e in events if e.get("dir") == direction and "msg" in e]


async def converse(client: TestClient, frames: int, config: dict | None = None, seed: int = 1):
    ws = await client.ws_connect("/ws?codec=pcm16")
    await receive_json(ws)
    await ws.send_json({"type": "start", "mode": "duplex", **({"config": config} if config else {})})
    assert (await receive_json(ws))["status"] == "listening"
    message, pcm = pcm16_message(frames * FRAME_SAMPLES, seed=seed)
    await ws.send_bytes(message)
    for _ in range(frames):
        assert (await ws.receive(timeout=2.0)).data[0] == 1
    return ws, np.frombuffer(message[1:], dtype="<i2")   # the int16 samples on the wire


async def test_a_conversation_is_kept_stereo_and_aligned_with_every_message(tmp_path):
    async with recording(tmp_path) as (client, store):
        ws, sent = await converse(client, 5, config={"temperature": 0})
        await ws.send_json({"type": "stop"})
        while (await receive_json(ws)).get("status") != "stopped":
            pass
        await store.synced()
        [folder] = folders(store)
        audio, events, meta = read_recording(folder)
        # left: the user's samples exactly as sent (pcm16 round trip); right: the echo, frame by frame
        assert len(audio) == 5 * FRAME_SAMPLES
        assert np.array_equal(audio[:, 0], sent)
        assert np.abs(audio[:, 1].astype(int) - sent.astype(int)).max() <= 1   # the echo, as a pcm16 client got it
        data, rate = sphn.read(str(folder / "audio.wav"))   # [channels, samples] float32
        assert rate == 24000 and np.array_equal(np.round(np.asarray(data) * 32768).astype(np.int16), audio.T)
        assert wire_types(events, "in") == ["start", "stop"]
        assert wire_types(events, "out") == ["status", "stop_acknowledged", "metrics", "status"]
        audio_out = [e for e in events if e.get("dir") == "out" and e["kind"] == "audio"]
        assert [e["at_ms"] for e in audio_out] == [0, 80, 160, 240, 320]
        assert all(e["samples"] == FRAME_SAMPLES and e["bytes"] == 1 + 2 * FRAME_SAMPLES for e in audio_out)
        assert events[-1]["kind"] == "summary" and events[-1]["reason"] == "stop"
        assert meta["complete"] and meta["mode"] == "duplex" and meta["config"]["temperature"] == 0
        assert isinstance(meta["seed"], int) and meta["seed_drawn_by_server"]   # drawn, so a replay can reuse it
        assert meta["summary"]["dropped"] == {} and meta["summary"]["samples"] == 5 * FRAME_SAMPLES
        await ws.close()


class BargeInStream(FakeStream):
    """Echoes frames; at the 4th frame of a burst the engine cuts its own turn (a barge-in)."""

    def push_audio(self, frame: UserFrame) -> None:
        self.pushed += 1
        self.sink(AssistantAudio(frame.pcm.copy(), heard=frame.pcm))
        if self.pushed == 4:
            self.sink(AssistantTurnEnded(interrupted=True, barge_in=True))

    @property
    def frame_locked(self) -> bool:
        return self.engine.frame_locked


class BargeInEngine(FakeEngine):
    def __init__(self, frame_locked: bool):
        super().__init__()
        self.frame_locked = frame_locked

    def open(self, config: dict, sink: Sink) -> BargeInStream:
        self.active += 1
        return BargeInStream(self, sink)


async def test_cut_audio_is_not_in_the_recording(tmp_path):
    """Frames still queued when the turn is cut: silence where frames are locked (duplex), absent otherwise."""
    for frame_locked in (True, False):
        async with recording(tmp_path / str(frame_locked), BargeInEngine(frame_locked)) as (client, store):
            ws = await client.ws_connect("/ws?codec=pcm16")
            await receive_json(ws)
            await ws.send_json({"type": "start"})
            await receive_json(ws)
            message, _ = pcm16_message(6 * FRAME_SAMPLES, seed=3)
            await ws.send_bytes(message)   # one message: all six frames are queued before the sender runs
            binary = 0
            while binary < (6 if frame_locked else 2):
                binary += (await ws.receive(timeout=2.0)).type == WSMsgType.BINARY
            await ws.send_json({"type": "stop"})
            while (await receive_json(ws)).get("status") != "stopped":
                pass
            await ws.close()
            await store.synced()
            [folder] = folders(store)
            audio, events, _ = read_recording(folder)
            cut = [e for e in events if e.get("kind") == "cut" and e["what"] == "barge_in"]
            assert cut and cut[0]["frames"] == 4
            assistant = audio[:, 1]
            decoded = Pcm16Decoder().decode(message[1:])   # what the engine got, and echoed
            echo = np.frombuffer(float_to_pcm16(decoded), dtype="<i2")   # as a pcm16 client received it
            assert np.array_equal(audio[:6 * FRAME_SAMPLES, 0], np.frombuffer(message[1:], dtype="<i2"))
            if frame_locked:   # frames 0-3 were sent as silence, 4-5 as they were made, beside their user frames
                assert len(audio) == 6 * FRAME_SAMPLES
                assert not assistant[:4 * FRAME_SAMPLES].any()
                assert np.array_equal(assistant[4 * FRAME_SAMPLES:], echo[4 * FRAME_SAMPLES:])
            else:   # frames 0-3 never left; 4 and 5 were queued after user frames 0-4 (resp. 0-5): placed after them
                sent = [e for e in events if e.get("dir") == "out" and e["kind"] == "audio"]
                assert [e["at_ms"] for e in sent] == [400, 480]
                assert len(audio) == 7 * FRAME_SAMPLES
                assert not assistant[:5 * FRAME_SAMPLES].any()
                assert np.array_equal(assistant[5 * FRAME_SAMPLES:], echo[4 * FRAME_SAMPLES:])


async def test_opting_out_keeps_nothing(tmp_path):
    async with recording(tmp_path) as (client, store):
        ws, _ = await converse(client, 2, config={"record": False})
        await ws.send_json({"type": "stop"})
        await ws.close()
        ws, _ = await converse(client, 2)                           # kept at first ...
        await ws.send_json({"type": "configure", "config": {"record": False}})   # ... then opted out
        await ws.send_json({"type": "stop"})
        await ws.close()
        await store.synced()
        assert folders(store) == []


async def test_reset_starts_a_new_segment_and_a_disconnect_completes_it(tmp_path):
    async with recording(tmp_path) as (client, store):
        ws, _ = await converse(client, 3)
        await ws.send_json({"type": "reset"})
        assert (await receive_json(ws))["type"] == "reset_acknowledged"
        message, _ = pcm16_message(2 * FRAME_SAMPLES, seed=9)
        await ws.send_bytes(message)
        for _ in range(2):
            assert (await ws.receive(timeout=2.0)).data[0] == 1
        await ws.close()                                            # no stop: the socket just goes
        await store.synced()
        first, second = folders(store)
        audio1, events1, meta1 = read_recording(first)
        audio2, events2, meta2 = read_recording(second)
        assert (len(audio1), len(audio2)) == (3 * FRAME_SAMPLES, 2 * FRAME_SAMPLES)
        assert meta1["summary"]["reason"] == "reset" and meta2["summary"]["reason"] == "disconnect"
        assert meta2["previous"] == meta1["id"] and meta2["segment"] == 2 and meta1["complete"] and meta2["complete"]
        assert wire_types(events1, "in")[-1] == "reset" and "reset_acknowledged" in wire_types(events1, "out")
        assert wire_types(events2, "in")[0] == "reset"   # what began the segment is its first line
        assert meta1["seed"] != meta2["seed"]    # a fresh drawn seed: each segment replays on its own


async def test_api_chat_is_recorded_through_the_same_seam(tmp_path):
    async with recording(tmp_path) as (client, store):
        ws = await client.ws_connect("/api/chat")
        assert (await ws.receive(timeout=2.0)).data == b"\x00"
        writer = sphn.OpusStreamWriter(24000)
        pcm = np.random.default_rng(0).uniform(-0.3, 0.3, 4 * FRAME_SAMPLES).astype(np.float32)
        for k in range(4):
            page = writer.append_pcm(pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES])
            if page:
                await ws.send_bytes(b"\x01" + page)
        await ws.receive(timeout=2.0)   # some assistant audio came back
        await ws.close()
        await store.synced()
        [folder] = folders(store)
        audio, events, meta = read_recording(folder)
        assert meta["endpoint"] == "api_chat" and meta["complete"] and meta["summary"]["reason"] == "disconnect"
        assert meta["summary"]["user_samples"] > 0 and len(audio) == meta["summary"]["user_samples"]
        assert any(e.get("dir") == "in" and e["kind"] == "audio" for e in events)


async def test_an_api_chat_restart_starts_a_new_segment(tmp_path):
    """Kyutai's control `restart` is /ws `reset`: the first segment is completed, a second one begins."""
    async with recording(tmp_path) as (client, store):
        ws = await client.ws_connect("/api/chat")
        assert (await ws.receive(timeout=2.0)).data == b"\x00"
        writer = sphn.OpusStreamWriter(24000)
        pcm = np.random.default_rng(0).uniform(-0.3, 0.3, 8 * FRAME_SAMPLES).astype(np.float32)

        async def send(k: int) -> None:
            page = writer.append_pcm(pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES])
            if page:
                await ws.send_bytes(b"\x01" + page)
        for k in range(4):
            await send(k)
        await ws.receive(timeout=2.0)
        await ws.send_bytes(bytes([0x03, 0x03]))   # control: restart
        for k in range(4, 8):
            await send(k)
        await ws.receive(timeout=2.0)
        await ws.close()
        await store.synced()
        first, second = folders(store)
        metas = [read_recording(f)[2] for f in (first, second)]
        assert [m["summary"]["reason"] for m in metas] == ["reset", "disconnect"], metas
        assert all(m["complete"] and m["endpoint"] == "api_chat" for m in metas)
        assert metas[1]["summary"]["user_samples"] > 0


async def test_v1_realtime_is_recorded_through_the_same_seam(tmp_path):
    """The Realtime codec's events (both ways) and user audio are kept like /ws's."""
    async with recording(tmp_path) as (client, store):
        ws = await client.ws_connect("/v1/realtime?model=duplex")
        created = await receive_json(ws)
        assert created["type"] == "session.created"
        pcm = np.random.default_rng(1).uniform(-0.3, 0.3, 4 * FRAME_SAMPLES).astype(np.float32)
        audio = base64.b64encode(float_to_pcm16(pcm)).decode()
        await ws.send_json({"type": "input_audio_buffer.append", "event_id": "e1", "audio": audio})
        await ws.send_json({"type": "no.such.event", "event_id": "e2"})
        while (await receive_json(ws))["type"] != "error":
            pass
        await ws.close()
        await store.synced()
        [folder] = folders(store)
        kept, events, meta = read_recording(folder)
        assert meta["endpoint"] == "realtime" and meta["complete"]
        assert meta["summary"]["user_samples"] == 4 * FRAME_SAMPLES == len(kept)
        assert np.array_equal(kept[:, 0], np.frombuffer(float_to_pcm16(pcm), dtype="<i2"))   # the user's track is what was sent
        assert "session.created" in wire_types(events, "out") and "error" in wire_types(events, "out")
        assert {"input_audio_buffer.append", "no.such.event"} <= set(wire_types(events, "in"))
        # the audio once, in the WAV: the append is logged with its size, not its base64 (a third larger than the audio)
        assert audio[:64] not in (folder / "events.jsonl").read_text()
        [append] = [e for e in events if e.get("dir") == "in" and e.get("msg", {}).get("type") == "input_audio_buffer.append"]
        assert append["msg"].get("audio_bytes") == 4 * FRAME_SAMPLES * 2, append


async def test_a_stalled_disk_drops_recording_data_counted_never_the_conversation(tmp_path):
    disk = threading.Event()   # the writer waits on it before every data item: a disk that does not answer
    async with recording(tmp_path, max_items=8, before_write=lambda: disk.wait(10)) as (client, store):
        try:
            ws, _ = await converse(client, 40)    # all 40 frames came back while the writer was stuck
            await ws.send_json({"type": "stop"})
            while (await receive_json(ws)).get("status") != "stopped":
                pass
            dropped = sum([await metric(client, "duplex_recording_dropped_total", f'{{kind="{kind}"}}')
                           for kind in ("events", "user_audio", "assistant_audio")])
            assert dropped > 0
        finally:
            disk.set()   # a failure must not leave the writer stuck
        await store.synced()
        [folder] = folders(store)
        audio, events, meta = read_recording(folder)
        assert meta["complete"] and sum(meta["summary"]["dropped"].values()) == dropped
        assert events[-1]["kind"] == "summary" and events[-1]["dropped"] == meta["summary"]["dropped"]
        await ws.close()


async def test_the_disk_cap_deletes_the_oldest(tmp_path):
    one = 2 * 4 * FRAME_SAMPLES * 2   # bytes of audio in a 4-frame stereo recording
    async with recording(tmp_path, max_bytes=int(2.5 * one) + 3 * 4096) as (client, store):
        ids = []
        for k in range(4):
            ws, _ = await converse(client, 4, seed=k)
            await ws.send_json({"type": "stop"})
            await ws.close()
            await store.synced()
            ids.append(folders(store)[-1].name)
        kept = [p.name for p in folders(store)]
        assert kept == ids[-len(kept):] and 1 <= len(kept) < 4   # the newest stay, the oldest went
        assert await metric(client, "duplex_recordings_deleted_total") == 4 - len(kept)


async def test_recordings_are_listed_and_served_behind_the_token_and_never_outside_dir(tmp_path):
    async with recording(tmp_path, token="s3cret") as (client, store):
        (store.directory.parent / "secret.txt").write_text("outside")
        ws = await client.ws_connect("/ws?codec=pcm16&token=s3cret")
        await receive_json(ws)
        await ws.send_json({"type": "start"})
        await receive_json(ws)
        await ws.send_json({"type": "stop"})
        await ws.close()
        await store.synced()
        assert (await client.get("/recordings")).status == 401
        listing = await (await client.get("/recordings?token=s3cret")).json()
        [entry] = listing["recordings"]
        assert entry["meta"]["complete"] and set(entry["files"]) == {"audio.wav", "events.jsonl", "meta.json"}
        rid = entry["id"]
        assert (await client.get(f"/recordings/{rid}/meta.json")).status == 401
        response = await client.get(f"/recordings/{rid}/meta.json", headers={"Authorization": "Bearer s3cret"})
        assert response.status == 200 and (await response.json())["id"] == rid
        for path in ("/recordings/../secret.txt", f"/recordings/{rid}/..%2F..%2Fsecret.txt", "/recordings/..%2F/meta.json",
                     "/recordings/%2Fetc/meta.json", "/recordings/..%2Frec%2F" + rid + "/meta.json",
                     f"/recordings/{rid}/config.json", "/recordings/%2E%2E/secret.txt"):
            response = await client.get(path + "?token=s3cret")
            assert response.status == 404, path
            assert "outside" not in await response.text()


async def test_a_pause_in_the_users_audio_is_kept_as_silence_on_both_tracks(tmp_path):
    """The user sends nothing for a while (wall time past the gap threshold): the silence is put in, the
    echo stays beside the frame it answers, and a replay's frame schedule skips the gap."""
    async with recording(tmp_path, gap_s=0.2) as (client, store):
        ws, first = await converse(client, 2)
        await asyncio.sleep(0.6)   # a pause, three times the gap threshold
        message, _ = pcm16_message(2 * FRAME_SAMPLES, seed=5)
        await ws.send_bytes(message)
        for _ in range(2):
            assert (await ws.receive(timeout=2.0)).data[0] == 1
        await ws.send_json({"type": "stop"})
        await ws.close()
        await store.synced()
        [folder] = folders(store)
        audio, events, meta = read_recording(folder)
        [gap] = [e for e in events if e.get("kind") == "gap"]
        assert gap["at"] == 2 * FRAME_SAMPLES and gap["samples"] % FRAME_SAMPLES == 0
        assert gap["samples"] >= int(0.4 * 24000)   # at least the pause less the threshold
        resume = 2 * FRAME_SAMPLES + gap["samples"]
        second = np.frombuffer(message[1:], dtype="<i2")
        assert len(audio) == resume + 2 * FRAME_SAMPLES
        assert np.array_equal(audio[:2 * FRAME_SAMPLES, 0], first)
        assert not audio[2 * FRAME_SAMPLES:resume].any()            # silence on both tracks during the pause
        assert np.array_equal(audio[resume:, 0], second)
        assert np.abs(audio[resume:, 1].astype(int) - second.astype(int)).max() <= 1   # the echo beside it
        rec = Recording.parse((folder / "meta.json").read_bytes(), (folder / "events.jsonl").read_bytes(),
                              (folder / "audio.wav").read_bytes())
        assert rec.frame_starts == [0, FRAME_SAMPLES, resume, resume + FRAME_SAMPLES]


async def test_an_interrupt_leaves_its_cut_audio_out_of_the_recording(tmp_path):
    """Four echoed frames are still queued when `interrupt` comes (one message of audio, then the interrupt,
    read in one go): they are sent as silence, and the recording has that silence, not the cut audio."""
    async with recording(tmp_path) as (client, store):
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        await ws.send_json({"type": "start"})
        await receive_json(ws)
        message, _ = pcm16_message(4 * FRAME_SAMPLES, seed=7)
        await ws.send_bytes(message)
        await ws.send_json({"type": "interrupt"})
        received = []
        while len(received) < 4:
            msg = await ws.receive(timeout=2.0)
            if msg.type == WSMsgType.BINARY:
                received.append(np.frombuffer(msg.data[1:], dtype="<i2"))
        await ws.send_json({"type": "stop"})
        while (await receive_json(ws)).get("status") != "stopped":
            pass
        await ws.close()
        await store.synced()
        [folder] = folders(store)
        audio, events, _ = read_recording(folder)
        [cut] = [e for e in events if e.get("kind") == "cut"]
        assert (cut["what"], cut["frames"]) == ("interrupt", 4)
        assert not np.concatenate(received).any()                      # the client heard silence ...
        assert np.array_equal(audio[:, 0], np.frombuffer(message[1:], dtype="<i2"))
        assert len(audio) == 4 * FRAME_SAMPLES and not audio[:, 1].any()   # ... and so says the recording
        assert "interrupt" in wire_types(events, "in") and "interrupt_acknowledged" in wire_types(events, "out")


class InFlightStream(FakeStream):
    """Echoes each frame, but holds the frame before a `reset` back as a model step in flight would: it is
    delivered after the reset (with the turnaround of its arrival before it), ahead of the next echo."""

    def __init__(self, engine: FakeEngine, sink: Sink):
        super().__init__(engine, sink)
        self.held: tuple[np.ndarray, float] | None = None

    def push_audio(self, frame: UserFrame) -> None:
        if self.held is not None:
            pcm, arrived = self.held
            self.held = None
            self.sink(AssistantAudio(pcm, turnaround_ms=(time.monotonic() - arrived) * 1000.0, heard=pcm))
        if self.pushed == 2:   # the third frame is "in the model" when the reset comes
            self.held = (frame.pcm.copy(), time.monotonic())
        else:
            self.sink(AssistantAudio(frame.pcm.copy(), turnaround_ms=0.0, heard=frame.pcm))
        self.pushed += 1


class InFlightEngine(FakeEngine):
    def open(self, config: dict, sink: Sink) -> InFlightStream:
        self.active += 1
        return InFlightStream(self, sink)


async def test_a_step_in_flight_at_reset_does_not_shift_the_next_segment(tmp_path):
    async with recording(tmp_path, InFlightEngine()) as (client, store):
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        await ws.send_json({"type": "start"})
        await receive_json(ws)
        before, _ = pcm16_message(3 * FRAME_SAMPLES, seed=11)
        await ws.send_bytes(before)
        await ws.send_json({"type": "reset"})
        after, _ = pcm16_message(2 * FRAME_SAMPLES, seed=12)
        await ws.send_bytes(after)
        binary = 0
        while binary < 5:   # 2 before the reset, the held one, 2 after
            binary += (await ws.receive(timeout=2.0)).type == WSMsgType.BINARY
        await ws.send_json({"type": "stop"})
        while (await receive_json(ws)).get("status") != "stopped":
            pass
        await ws.close()
        await store.synced()
        first, second = folders(store)
        audio2, events2, _ = read_recording(second)
        sent_after = np.frombuffer(after[1:], dtype="<i2")
        echo_after = np.frombuffer(float_to_pcm16(Pcm16Decoder().decode(after[1:])), dtype="<i2")
        assert len(audio2) == 2 * FRAME_SAMPLES
        assert np.array_equal(audio2[:, 0], sent_after)
        assert np.array_equal(audio2[:, 1], echo_after)   # each answer beside its own user frame
        assert [e["at_ms"] for e in events2 if e.get("dir") == "out" and e["kind"] == "audio"] == [0, 80]


class LateStream(FakeStream):
    """Answers its frames only when told (a model step that came late: a loaded machine, a prefill)."""

    def __init__(self, engine: FakeEngine, sink: Sink):
        super().__init__(engine, sink)
        self.waiting: list[tuple[UserFrame, float]] = []
        self.four = asyncio.Event()

    def push_audio(self, frame: UserFrame) -> None:
        self.pushed += 1
        self.waiting.append((frame, time.monotonic()))
        if self.pushed == 4:
            self.four.set()

    def answer_all(self) -> None:
        for frame, arrived in self.waiting:
            self.sink(AssistantAudio(frame.pcm.copy(), (time.monotonic() - arrived) * 1000, heard=frame.pcm))
        self.waiting.clear()


class LateEngine(FakeEngine):
    def open(self, config: dict, sink: Sink) -> FakeStream:
        stream = LateStream(self, sink)
        self.active += 1
        self.streams.append(stream)
        return stream


async def test_frames_answered_late_are_no_pause_of_the_users(tmp_path):
    """The user track is written when the model consumed a frame, but a frame that waited for its step (longer
    than the gap threshold) was sent on time: no silence is put in (it once was, under a loaded CI)."""
    engine = LateEngine()
    async with recording(tmp_path, engine, gap_s=0.2) as (client, store):
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        await ws.send_json({"type": "start", "mode": "duplex"})
        assert (await receive_json(ws))["status"] == "listening"
        message, _ = pcm16_message(4 * FRAME_SAMPLES, seed=3)
        await ws.send_bytes(message)
        stream = tp.cast(LateStream, engine.streams[0])
        await asyncio.wait_for(stream.four.wait(), 10)
        await asyncio.sleep(0.6)   # the step comes three gap thresholds late
        stream.answer_all()
        for _ in range(4):
            assert (await ws.receive(timeout=2.0)).data[0] == 1
        await ws.send_json({"type": "stop"})
        await ws.close()
        await store.synced()
        [folder] = folders(store)
        audio, events, _ = read_recording(folder)
        assert [e for e in events if e.get("kind") == "gap"] == []
        assert len(audio) == 4 * FRAME_SAMPLES
        assert np.array_equal(audio[:, 0], np.frombuffer(message[1:], dtype="<i2"))
