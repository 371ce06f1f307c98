"""The app in-process, around a fake engine: the wire contract of /ws and /api/chat in milliseconds.

No model, no child process: `create_app` is served by aiohttp's own TestServer on loopback and driven
by its TestClient. The fake engine echoes every user frame back as assistant audio, so counts are exact.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time

import aiohttp
import numpy as np
import pytest
import sphn
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from duplex.audio import FRAME_SAMPLES, float_to_pcm16
from duplex.engines.base import AssistantAudio, AssistantText, CapacityError, Engine, EngineStream, Sink, UserFrame
from duplex.server.app import create_app
from duplex.server.settings import ServerSettings
from duplex.server.state import SOCKETS

TIMEOUT = 2.0


class FakeStream(EngineStream):
    def __init__(self, engine: FakeEngine, sink: Sink):
        self.engine = engine
        self.sink = sink
        self.pushed = 0
        self.closed = asyncio.Event()

    @property
    def mode(self) -> str:
        return self.engine.name

    def push_audio(self, frame: UserFrame) -> None:
        self.engine.calls["push_audio"] += 1
        self.pushed += 1
        self.sink(AssistantAudio(frame.pcm.copy(), heard=frame.pcm))
        for _ in range(self.engine.chatter):
            self.sink(AssistantText("a"))

    def interrupt(self) -> None:
        self.engine.calls["interrupt"] += 1

    def reset(self) -> None:
        self.engine.calls["reset"] += 1

    def configure(self, config: dict) -> None:
        self.engine.calls["configure"] += 1

    def close(self) -> None:
        self.engine.calls["close"] += 1
        self.engine.active -= 1
        self.closed.set()


class FakeEngine(Engine):
    """Echoes each user frame as one AssistantAudio; `slots` streams at most (then CapacityError)."""

    def __init__(self, name: str = "duplex", slots: int = 4, log: list[str] | None = None, chatter: int = 0):
        self.name = name
        self.chatter = chatter   # AssistantText frames after each echoed frame (to flood the outbox)
        self.slots = slots
        self.active = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.streams: list[FakeStream] = []
        self.log = log if log is not None else []

    def open(self, config: dict, sink: Sink) -> FakeStream:
        self.calls["open"] += 1
        if self.active >= self.slots:
            raise CapacityError(f"every {self.name} slot is busy")
        self.active += 1
        stream = FakeStream(self, sink)
        self.streams.append(stream)
        return stream

    def has_free_slot(self) -> bool:
        return self.active < self.slots

    def health(self) -> dict:
        return {"slots": self.slots, "active": self.active}

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


@contextlib.asynccontextmanager
async def serving(*engines: FakeEngine, token: str | None = None, **settings):
    engines = engines or (FakeEngine(),)
    app = create_app({e.name: e for e in engines}, ServerSettings(token=token, static_dir=None, **settings))
    async with TestClient(TestServer(app)) as client:
        yield client


def pcm16_message(samples: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    pcm = np.random.default_rng(seed).uniform(-0.5, 0.5, samples).astype(np.float32)
    return b"\x01" + float_to_pcm16(pcm), pcm


async def receive_json(ws) -> dict:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def open_started(client: TestClient, mode: str = "duplex"):
    ws = await client.ws_connect("/ws?codec=pcm16")
    assert (await receive_json(ws))["type"] == "ready"
    await ws.send_json({"type": "start", "mode": mode})
    assert (await receive_json(ws))["status"] == "listening"
    return ws


async def metric(client: TestClient, name: str, labels: str = "") -> float:
    text = await (await client.get("/metrics")).text()
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} not in /metrics"
    return float(match.group(1))


async def test_ready_on_open_then_start_listens():
    async with serving() as client:
        ws = await client.ws_connect("/ws?codec=pcm16")
        ready = await receive_json(ws)
        assert ready["type"] == "ready"
        assert ready["protocol"] == 1
        assert ready["modes"] == ["duplex"]
        assert ready["audio"] == {"codec": "pcm16", "sample_rate": 24000, "frame_ms": 80}
        await ws.send_json({"type": "start"})
        status = await receive_json(ws)
        assert (status["type"], status["status"], status["mode"]) == ("status", "listening", "duplex")
        assert status["session_id"] == ready["session_id"]
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 1.0
        await ws.close()


async def test_one_audio_frame_out_per_1920_samples_then_stop():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        first, pcm_a = pcm16_message(5000, seed=1)            # two frames and 1160 samples left over
        second, pcm_b = pcm16_message(3 * FRAME_SAMPLES - 5000, seed=2)  # completes the third
        await ws.send_bytes(first)
        await ws.send_bytes(second)
        sent = np.concatenate([pcm_a, pcm_b])
        for i in range(3):
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type == WSMsgType.BINARY and msg.data[0] == 1 and len(msg.data) == 1 + 2 * FRAME_SAMPLES
            echoed = np.frombuffer(msg.data[1:], dtype="<i2")
            expected = np.frombuffer(float_to_pcm16(sent[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]), dtype="<i2")
            assert np.abs(echoed.astype(int) - expected).max() <= 1
        await ws.send_json({"type": "stop"})
        # nothing else was queued before the answer to stop: exactly three frames came back
        ack = await receive_json(ws)
        assert (ack["type"], ack["queues_cleared"]) == ("stop_acknowledged", True)
        metrics = await receive_json(ws)
        assert metrics["type"] == "metrics"
        assert (metrics["frames_in"], metrics["frames_out"], metrics["frames_dropped"]) == (3, 3, 0)
        status = await receive_json(ws)
        assert (status["type"], status["status"], status["mode"]) == ("status", "stopped", "duplex")
        assert engine.streams[0].closed.is_set() and engine.calls["close"] == 1 and engine.active == 0
        assert engine.calls["push_audio"] == 3
        await ws.send_json({"type": "start"})                  # the socket stays open: a new conversation
        assert (await receive_json(ws))["status"] == "listening"
        assert engine.calls["open"] == 2
        await ws.close()


@pytest.mark.parametrize("send", [
    ("str", "{not json"),
    ("str", json.dumps({"type": "dance"})),
    ("bytes", b"\x07hello"),
    ("bytes", b""),
])
async def test_a_bad_message_is_answered_and_the_socket_stays_open(send):
    async with serving() as client:
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        kind, payload = send
        await (ws.send_str(payload) if kind == "str" else ws.send_bytes(payload))
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "bad_message")
        if kind == "bytes":
            got = "0x07" if payload else "an empty message"
            assert error["message"] == f"binary messages must start with 0x01 (audio); got {got}"
        await ws.send_json({"type": "start"})
        assert (await receive_json(ws))["status"] == "listening"
        await ws.close()


async def test_too_many_bad_messages_close_with_1008_after_the_last_error():
    async with serving() as client:
        ws = await client.ws_connect("/ws")
        await receive_json(ws)
        for _ in range(51):
            await ws.send_str("{")
        for _ in range(51):
            assert (await receive_json(ws))["code"] == "bad_message"
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "more than 50 bad messages")


async def test_capacity_error_when_every_slot_is_taken():
    engine = FakeEngine(slots=1)
    async with serving(engine) as client:
        first = await open_started(client)
        second = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(second)
        await second.send_json({"type": "start", "mode": "duplex"})
        error = await receive_json(second)
        assert (error["code"], error["message"]) == (
            "capacity", "every duplex slot is busy; try again later or use mode=cascade")
        assert engine.calls["open"] == 2 and engine.active == 1
        await first.close()
        await second.close()


async def test_wrong_token_is_refused_on_both_sockets():
    async with serving(token="s3cret") as client:
        ws = await client.ws_connect("/ws?token=nope")
        error = await receive_json(ws)
        assert (error["type"], error["code"], error["session_id"]) == ("error", "unauthorized", "")
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "unauthorized")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/api/chat?token=nope")
        assert refused.value.status == 401
        ok = await client.ws_connect("/ws?token=s3cret")
        assert (await receive_json(ok))["type"] == "ready"
        await ok.close()
        assert await metric(client, "duplex_errors_total", '{code="unauthorized"}') == 1.0


async def test_a_disconnect_closes_the_stream_and_the_gauge_returns_to_zero():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 1.0
        assert await metric(client, "duplex_sessions_active", '{mode="duplex"}') == 1.0
        await ws.close()
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 0.0
        assert await metric(client, "duplex_sessions_active", '{mode="duplex"}') == 0.0
        assert client.app[SOCKETS] == set()
        assert engine.active == 0


async def flood(ws, frames: int = 60) -> None:
    """One message of `frames` frames: the fake echoes them all before the sender runs once, so the
    outbox (50 audio frames at most) drops the oldest 10."""
    message, _ = pcm16_message(frames * FRAME_SAMPLES)
    await ws.send_bytes(message)
    for _ in range(50):
        assert (await ws.receive(timeout=TIMEOUT)).type == WSMsgType.BINARY


async def test_frames_dropped_in_the_outbox_are_reported_after_stop():
    async with serving() as client:
        ws = await open_started(client)
        await flood(ws)
        await ws.send_json({"type": "stop"})
        assert (await receive_json(ws))["type"] == "stop_acknowledged"
        metrics = await receive_json(ws)
        assert (metrics["frames_in"], metrics["frames_out"], metrics["frames_dropped"]) == (60, 60, 10)
        assert await metric(client, "duplex_frames_dropped_total") == 10.0
        # a second conversation on the same socket adds only its own drops
        await ws.send_json({"type": "start"})
        await receive_json(ws)  # status stopped
        assert (await receive_json(ws))["status"] == "listening"
        await flood(ws)
        await ws.send_json({"type": "stop"})
        assert (await receive_json(ws))["type"] == "stop_acknowledged"
        assert await metric(client, "duplex_frames_dropped_total") == 20.0
        await ws.close()


async def test_frames_dropped_in_the_outbox_are_reported_after_a_disconnect():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        await flood(ws)
        await ws.close()
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)
        assert await metric(client, "duplex_frames_dropped_total") == 10.0
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 0.0


@pytest.mark.parametrize("endpoint, reason", [
    ("/ws?codec=pcm16", "client too slow: stopped reading"),
    ("/api/chat", "client too slow"),
])
async def test_a_reader_that_falls_behind_is_closed_1008(endpoint, reason):
    # 2,100 text pieces queued by one user frame, before the sender runs once: past the outbox's 2,000
    engine = FakeEngine(chatter=2100)
    async with serving(engine) as client:
        if endpoint.startswith("/ws"):
            ws = await open_started(client)
            message, _ = pcm16_message(FRAME_SAMPLES)
        else:
            ws = await client.ws_connect(endpoint)
            assert (await ws.receive(timeout=TIMEOUT)).data == b"\x00"
            message = b"\x01" + ogg_pages(1)[0]
        await ws.send_bytes(message)
        while not engine.streams[0].pushed:   # (the Ogg reader may hold the first frame back: send it again)
            await asyncio.sleep(0.01)
            await ws.send_bytes(message)
        await ws.send_bytes(message)   # the connection notices the dead sender on its next message
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, reason)
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)
        label = "ws" if endpoint.startswith("/ws") else "api_chat"
        assert await metric(client, "duplex_connections_open", f'{{endpoint="{label}"}}') == 0.0


def ogg_pages(frames: int) -> list[bytes]:
    writer = sphn.OpusStreamWriter(24000)
    t = np.arange(frames * FRAME_SAMPLES) / 24000
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return [writer.append_pcm(pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES]) for i in range(frames)]


async def test_api_chat_handshake_then_echoed_ogg_pages():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/api/chat?text_temperature=0.5")
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00")
        assert await metric(client, "duplex_connections_open", '{endpoint="api_chat"}') == 1.0
        for page in ogg_pages(10):
            await ws.send_bytes(b"\x01" + page)
        await ws.send_bytes(b"\x05ignored")   # a client's error report is logged, not answered
        pages = []
        for _ in range(10):   # the decoder gives back all ten frames: ten echoed, one page each
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type == WSMsgType.BINARY and msg.data[0] == 1
            pages.append(msg.data[1:])
        stream = engine.streams[0]
        assert (stream.pushed, engine.calls["open"]) == (10, 1)
        reader = sphn.OpusStreamReader(24000)
        assert sum(len(reader.append_bytes(page)) for page in pages) == 10 * FRAME_SAMPLES   # valid Ogg Opus
        await ws.close()
        await asyncio.wait_for(stream.closed.wait(), TIMEOUT)
        assert await metric(client, "duplex_connections_open", '{endpoint="api_chat"}') == 0.0
        assert await metric(client, "duplex_sessions_active", '{mode="duplex"}') == 0.0


async def test_api_chat_refuses_when_full_or_without_a_duplex_engine():
    full = "server full: every duplex slot is busy, try again later"
    async with serving(FakeEngine(slots=0)) as client:
        ws = await client.ws_connect("/api/chat")
        assert (await ws.receive(timeout=TIMEOUT)).data == b"\x05capacity: " + full.encode()   # no handshake
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1013, full)
    no_model = "no duplex model loaded: this server serves the cascade only (use /ws)"
    async with serving(FakeEngine(name="cascade")) as client:
        ws = await client.ws_connect("/api/chat")
        assert (await ws.receive(timeout=TIMEOUT)).data == b"\x05unsupported: " + no_model.encode()
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1011, no_model)


async def test_engines_start_with_the_app_stop_in_reverse_and_sockets_close_1001():
    log: list[str] = []
    app = create_app({"duplex": FakeEngine("duplex", log=log), "cascade": FakeEngine("cascade", log=log)},
                     ServerSettings(static_dir=None))
    server = TestServer(app)
    client = TestClient(server)
    await client.start_server()
    try:
        assert log == ["start duplex", "start cascade"]
        ws = await client.ws_connect("/ws")
        await receive_json(ws)
        closing = asyncio.create_task(ws.receive(timeout=TIMEOUT))
        await server.close()
        msg = await closing
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "server shutting down")
        assert log == ["start duplex", "start cascade", "stop cascade", "stop duplex"]
    finally:
        await client.close()


# --- front-end limits: --max-connections, --start-timeout-s ---------------------------------------

async def sockets_settle(client: TestClient, n: int) -> None:
    """The server's handler finishes its teardown a few loop turns after the client's close returns.

    A short poll, bounded: the app has no event for "a handler returned", and adding one for tests only
    would be state that production code must keep right."""
    async with asyncio.timeout(TIMEOUT):
        while len(client.app[SOCKETS]) != n:  # noqa: ASYNC110 (no event to wait on; see above)
            await asyncio.sleep(0.005)


async def test_connections_past_the_cap_are_refused_1013_counted_and_admitted_again_after_a_close():
    engine = FakeEngine()
    async with serving(engine, max_connections=2) as client:
        first = await open_started(client)
        chat = await client.ws_connect("/api/chat")
        assert (await chat.receive(timeout=TIMEOUT)).data == b"\x00"
        reason = "server full: 2 connections open, try again later"
        refused = await client.ws_connect("/ws")
        error = await receive_json(refused)   # the error first: browsers cannot read a failed upgrade
        assert (error["type"], error["code"], error["message"], error["session_id"]) == (
            "error", "capacity", reason, "")
        msg = await refused.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1013, reason)
        refused_chat = await client.ws_connect("/api/chat")
        # no handshake: a 0x05 error (Kyutai's clients ignore it), then the close
        assert (await refused_chat.receive(timeout=TIMEOUT)).data == b"\x05capacity: " + reason.encode()
        msg = await refused_chat.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1013, reason)
        assert engine.calls["open"] == 2   # a refused socket never reaches an engine
        assert await metric(client, "duplex_connections_refused_total", '{endpoint="ws",reason="max_connections"}') == 1
        assert await metric(client, "duplex_connections_refused_total",
                            '{endpoint="api_chat",reason="max_connections"}') == 1
        assert await metric(client, "duplex_errors_total", '{code="capacity"}') == 2
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 1
        assert await metric(client, "duplex_connections_open", '{endpoint="api_chat"}') == 1
        await first.close()
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)
        await sockets_settle(client, 1)
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 0
        again = await open_started(client)   # room again
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 1
        assert len(client.app[SOCKETS]) == 2
        await again.close()
        await chat.close()


async def test_a_burst_of_upgrades_never_overshoots_the_cap(monkeypatch):
    prepare = web.WebSocketResponse.prepare

    async def slow_prepare(self, request):   # an upgrade that yields, so the burst's handlers interleave
        await asyncio.sleep(0.01)
        return await prepare(self, request)
    monkeypatch.setattr(web.WebSocketResponse, "prepare", slow_prepare)
    async with serving(max_connections=3) as client:
        async def first_message(_):
            ws = await client.ws_connect("/ws")
            return ws, await receive_json(ws)
        opened = await asyncio.gather(*map(first_message, range(8)))
        kinds = sorted(msg["type"] for _, msg in opened)
        assert kinds == ["error"] * 5 + ["ready"] * 3
        assert await metric(client, "duplex_connections_refused_total", '{endpoint="ws",reason="max_connections"}') == 5
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 3
        for ws, _ in opened:
            await ws.close()
        await sockets_settle(client, 0)
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 0


async def expect_start_timeout(ws, since: float, reason: str) -> None:
    error = await receive_json(ws)
    assert (error["type"], error["code"], error["message"]) == (
        "error", "not_started", "no `start` within 0.2 s of opening the socket (or of `stop`); the socket is closed")
    msg = await ws.receive(timeout=TIMEOUT)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, reason)
    assert time.monotonic() - since >= 0.2


async def test_a_socket_that_never_starts_is_told_then_closed_1008():
    async with serving(start_timeout_s=0.2) as client:
        opened = time.monotonic()
        ws = await client.ws_connect("/ws")
        assert (await receive_json(ws))["type"] == "ready"
        await ws.send_str("{")   # messages that start nothing do not move the deadline
        assert (await receive_json(ws))["code"] == "bad_message"
        await expect_start_timeout(ws, opened, "start timeout: no start within 0.2 s")
        await sockets_settle(client, 0)
        assert await metric(client, "duplex_start_timeouts_total", '{endpoint="ws"}') == 1
        assert await metric(client, "duplex_errors_total", '{code="not_started"}') == 1
        assert await metric(client, "duplex_connections_open", '{endpoint="ws"}') == 0


async def test_a_started_socket_is_not_closed_and_the_timer_runs_again_after_stop():
    engine = FakeEngine()
    async with serving(engine, start_timeout_s=0.2) as client:
        ws = await open_started(client)
        with pytest.raises(asyncio.TimeoutError):   # twice the timeout: nothing comes, the socket stays open
            await ws.receive(timeout=0.4)
        await ws.send_json({"type": "stop"})
        stopped = time.monotonic()
        assert [(await receive_json(ws))["type"] for _ in range(3)] == ["stop_acknowledged", "metrics", "status"]
        await expect_start_timeout(ws, stopped, "start timeout: no start within 0.2 s")
        assert engine.calls["open"] == 1 and engine.active == 0
        await sockets_settle(client, 0)
        assert await metric(client, "duplex_start_timeouts_total", '{endpoint="ws"}') == 1


async def test_api_chat_without_audio_is_closed_1008_and_with_audio_is_not():
    engine = FakeEngine()
    async with serving(engine, start_timeout_s=0.2) as client:
        silent = await client.ws_connect("/api/chat")
        talking = await client.ws_connect("/api/chat")
        for ws in (silent, talking):
            assert (await ws.receive(timeout=TIMEOUT)).data == b"\x00"
        await talking.send_bytes(b"\x01" + ogg_pages(1)[0])
        explained = await silent.receive(timeout=TIMEOUT)   # a 0x05 error first, then the close
        assert explained.data == b"\x05not_started: start timeout: no audio within 0.2 s; the socket is closed"
        msg = await silent.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "start timeout: no audio within 0.2 s")
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)   # its slot is free
        assert not engine.streams[1].closed.is_set()
        assert await metric(client, "duplex_start_timeouts_total", '{endpoint="api_chat"}') == 1
        assert await metric(client, "duplex_connections_open", '{endpoint="api_chat"}') == 1
        await talking.close()
