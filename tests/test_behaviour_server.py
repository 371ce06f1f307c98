"""Server behaviour no other test touched, in-process around the fake engine (test_server_inprocess.py):
reset and configure as the session answers them, which routes are public, /metrics content, oversized
messages and bad queries, auto mode with every engine full, engine-queue drops in the reports."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from duplex.audio import FRAME_SAMPLES
from duplex.engines.base import AssistantTurnStarted, Unsupported
from duplex.server.app import create_app
from duplex.server.settings import ServerSettings

from .test_server_inprocess import (
    TIMEOUT,
    FakeEngine,
    FakeStream,
    metric,
    ogg_pages,
    open_started,
    pcm16_message,
    receive_json,
    serving,
)


async def receive_close(ws) -> tuple[WSMsgType, int | None, str | None]:
    msg = await ws.receive(timeout=TIMEOUT)
    return msg.type, msg.data, msg.extra


# --- 1. reset, as the session answers it ---------------------------------------------------------

async def test_reset_while_speaking_answers_ack_then_tts_stop_and_listening():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        engine.streams[0].sink(AssistantTurnStarted())   # the assistant starts speaking
        assert (await receive_json(ws))["status"] == "speaking"
        assert (await receive_json(ws))["type"] == "tts_start"
        await ws.send_json({"type": "reset"})
        assert (await receive_json(ws))["type"] == "reset_acknowledged"
        assert (await receive_json(ws))["type"] == "tts_stop"
        status = await receive_json(ws)
        assert (status["type"], status["status"], status["mode"]) == ("status", "listening", "duplex")
        assert engine.calls["reset"] == 1
        # a reset while listening: the acknowledgement alone (the next message is the answer to stop)
        await ws.send_json({"type": "reset"})
        assert (await receive_json(ws))["type"] == "reset_acknowledged"
        await ws.send_json({"type": "stop"})
        assert (await receive_json(ws))["type"] == "stop_acknowledged"
        assert engine.calls["reset"] == 2
        await ws.close()


async def test_reset_before_start_is_not_started():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/ws")
        await receive_json(ws)
        await ws.send_json({"type": "reset"})
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "not_started")
        assert engine.calls["reset"] == 0
        await ws.close()


# --- 3. configure, as the session answers it -----------------------------------------------------

async def test_configure_reaches_the_stream_and_bad_ones_get_an_error(monkeypatch):
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/ws?codec=pcm16")
        await receive_json(ws)
        await ws.send_json({"type": "configure", "config": {"temperature": 0.5}})
        assert (await receive_json(ws))["code"] == "not_started"
        await ws.send_json({"type": "start"})
        await receive_json(ws)
        await ws.send_json({"type": "configure", "config": {"temperature": 0.5, "seed": 3}})
        await ws.send_json({"type": "configure", "config": {"temperature": 9}})       # out of range
        error = await receive_json(ws)   # (a good configure has no answer: the error comes first)
        assert (error["type"], error["code"]) == ("error", "bad_message")
        await ws.send_json({"type": "configure", "config": {"no_such_key": 1}})
        assert (await receive_json(ws))["code"] == "bad_message"
        await ws.send_json({"type": "configure"})                                     # no config at all
        assert (await receive_json(ws))["code"] == "bad_message"
        assert engine.calls["configure"] == 1

        def refuse(self: FakeStream, config: dict) -> None:
            raise Unsupported("not while the moon is full")
        monkeypatch.setattr(FakeStream, "configure", refuse)
        await ws.send_json({"type": "configure", "config": {"top_k": 5}})
        error = await receive_json(ws)
        assert (error["code"], error["message"]) == ("unsupported", "not while the moon is full")
        await ws.send_json({"type": "stop"})   # the conversation goes on after all that
        assert (await receive_json(ws))["type"] == "stop_acknowledged"
        await ws.close()


# --- 4. public routes, /metrics content ----------------------------------------------------------

@contextlib.asynccontextmanager
async def serving_with_index(tmp_path, token: str):
    (tmp_path / "index.html").write_text("<html>duplex</html>")
    app = create_app({"duplex": FakeEngine()}, ServerSettings(token=token, static_dir=tmp_path))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_health_metrics_and_the_page_are_public_conversations_need_the_token(tmp_path):
    async with serving_with_index(tmp_path, token="s3cret") as client:
        for path in ("/health", "/config", "/metrics", "/"):
            response = await client.get(path)
            assert response.status == 200, path
        assert "duplex" in await (await client.get("/")).text()
        assert list((await (await client.get("/config")).json())["engines"]) == ["duplex"]   # the engine's default offer
        assert (await (await client.get("/health")).json())["status"] == "ok"
        ws = await client.ws_connect("/ws")   # no token at all
        assert (await receive_json(ws))["code"] == "unauthorized"
        assert await receive_close(ws) == (WSMsgType.CLOSE, 1008, "unauthorized")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/api/chat")
        assert refused.value.status == 401
        # the token as a header works on both
        headers = {"Authorization": "Bearer s3cret"}
        ws = await client.ws_connect("/ws", headers=headers)
        assert (await receive_json(ws))["type"] == "ready"
        chat = await client.ws_connect("/api/chat", headers=headers)
        assert (await chat.receive(timeout=TIMEOUT)).data == b"\x00"
        await ws.close()
        await chat.close()
        assert await metric(client, "duplex_connections_refused_total", '{endpoint="ws",reason="unauthorized"}') == 1


METRIC_NAMES = [
    "duplex_sessions_active", "duplex_sessions_total", "duplex_connections_open", "duplex_connections_refused_total",
    "duplex_start_timeouts_total", "duplex_frames_in_total", "duplex_frames_out_total", "duplex_frames_dropped_total",
    "duplex_errors_total", "duplex_step_ms", "duplex_tick_frames", "duplex_frame_turnaround_ms",
    "duplex_response_latency_ms",
]


async def test_metrics_names_are_there_and_frame_counters_move():
    async with serving() as client:
        response = await client.get("/metrics")
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
        for name in METRIC_NAMES:
            assert f"# TYPE {name} " in text, name
        before_in = await metric(client, "duplex_frames_in_total")
        before_out = await metric(client, "duplex_frames_out_total")
        ws = await open_started(client)
        message, _ = pcm16_message(3 * FRAME_SAMPLES)
        await ws.send_bytes(message)
        for _ in range(3):
            assert (await ws.receive(timeout=TIMEOUT)).type == WSMsgType.BINARY
        assert await metric(client, "duplex_frames_in_total") == before_in + 3
        assert await metric(client, "duplex_frames_out_total") == before_out + 3
        assert await metric(client, "duplex_sessions_total", '{mode="duplex"}') == 1
        health = await (await client.get("/health")).json()
        assert (health["frames_in"], health["frames_out"], health["connections"]) == (3, 3, 1)
        await ws.close()


# --- 5. oversized messages, bad queries ----------------------------------------------------------

async def test_a_message_over_1_mib_closes_1009_and_the_server_goes_on():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        await ws.send_bytes(b"\x01" + b"\x00" * (1024 * 1024))
        msg_type, code, _ = await receive_close(ws)
        assert (msg_type, code) == (WSMsgType.CLOSE, 1009)
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)   # its slot is freed
        again = await open_started(client)
        await again.close()


@pytest.mark.parametrize("kind, payload", [
    ("bytes", b"\x01" + b"\x00" * (256 * 1024)),
    ("str", json.dumps({"type": "text_input", "text": "x" * (64 * 1024)})),
], ids=["audio", "text"])
async def test_a_message_over_the_session_limit_is_too_large_and_dropped(kind, payload):
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await open_started(client)
        await (ws.send_bytes(payload) if kind == "bytes" else ws.send_str(payload))
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "too_large")
        assert engine.calls["push_audio"] == 0
        message, _ = pcm16_message(FRAME_SAMPLES)   # the socket still works
        await ws.send_bytes(message)
        assert (await ws.receive(timeout=TIMEOUT)).type == WSMsgType.BINARY
        assert await metric(client, "duplex_errors_total", '{code="too_large"}') == 1
        await ws.close()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("key", ["temperature", "text_temperature", "top_k", "text_top_k", "seed"])
async def test_a_non_finite_config_number_is_refused_on_ws(key, value):
    """Python's JSON reader takes NaN and Infinity (and 1e999 is infinity): every numeric key refuses them."""
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/ws?codec=pcm16")
        assert (await receive_json(ws))["type"] == "ready"
        await ws.send_str('{"type": "start", "mode": "duplex", "config": {"%s": %s}}' % (key, value))
        error = await receive_json(ws)
        assert (error["type"], error["code"]) == ("error", "bad_message") and f"config.{key}" in error["message"]
        assert engine.calls["open"] == 0
        await ws.close()


@pytest.mark.parametrize("query, message", [
    ("mode=telepathy", "mode must be one of duplex, cascade, auto"),
    ("codec=mp3", "codec must be one of opus, pcm16"),
], ids=["mode", "codec"])
async def test_a_bad_query_gets_an_error_then_1008(query, message):
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect(f"/ws?{query}")
        error = await receive_json(ws)
        assert (error["type"], error["code"], error["message"]) == ("error", "bad_message", message)
        assert await receive_close(ws) == (WSMsgType.CLOSE, 1008, "bad_message")
        assert engine.calls["open"] == 0
        assert await metric(client, "duplex_connections_refused_total", '{endpoint="ws",reason="bad_query"}') == 1


async def test_api_chat_refuses_opus_garbage_and_goes_on():
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/api/chat")
        assert (await ws.receive(timeout=TIMEOUT)).data == b"\x00"
        await ws.send_bytes(b"\x01this is not an ogg page at all")
        await ws.send_str("text frames are refused too")
        for prefix in (b"\x05bad_audio: ", b"\x05bad_message: "):   # coded 0x05 errors, the socket stays open
            assert (await ws.receive(timeout=TIMEOUT)).data.startswith(prefix)
        for page in ogg_pages(4):
            await ws.send_bytes(b"\x01" + page)
        for _ in range(4):   # the reader resynced on the next page: all four frames come back
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type == WSMsgType.BINARY and msg.data[0] == 1
        assert engine.streams[0].pushed == 4
        await ws.close()


@pytest.mark.parametrize("query", ["text_temperature=hot", "audio_topk=many", "audio_seed=x", "seed=inf",
                                   "audio_topk=1e999", "audio_temperature=nan", "text_temperature=-inf",
                                   "text_seed=nan", "text_topk=-Infinity"])
async def test_api_chat_bad_query_value_closes_1008(query):
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect(f"/api/chat?{query}")
        error = await ws.receive(timeout=TIMEOUT)   # no handshake byte first: a 0x05 error, then the close
        assert error.data.startswith(b"\x05bad_message: bad query parameter: ")
        msg_type, code, reason = await receive_close(ws)
        assert (msg_type, code) == (WSMsgType.CLOSE, 1008)
        assert reason.startswith("bad query parameter: ")
        assert engine.calls["open"] == 0
        assert await metric(client, "duplex_connections_refused_total", '{endpoint="api_chat",reason="bad_query"}') == 1


# --- 7. auto mode ---------------------------------------------------------------------------------

async def test_auto_falls_back_to_the_cascade_then_answers_capacity_when_every_engine_is_full():
    duplex, cascade = FakeEngine("duplex", slots=1), FakeEngine("cascade", slots=1)
    async with serving(duplex, cascade) as client:
        first = await open_started(client, mode="auto")
        second = await client.ws_connect("/ws?codec=pcm16")   # the query's default mode is auto
        await receive_json(second)
        await second.send_json({"type": "start"})
        status = await receive_json(second)
        assert (status["status"], status["mode"]) == ("listening", "cascade")
        third = await client.ws_connect("/ws?codec=pcm16&mode=auto")
        await receive_json(third)
        await third.send_json({"type": "start"})
        error = await receive_json(third)
        assert (error["type"], error["code"], error["message"]) == (
            "error", "capacity", "every slot of every engine is busy; try again later")
        assert (duplex.active, cascade.active) == (1, 1)
        assert duplex.calls["open"] == 1 and cascade.calls["open"] == 1   # no engine was asked past its room
        await first.close()
        await asyncio.wait_for(duplex.streams[0].closed.wait(), TIMEOUT)
        await third.send_json({"type": "start"})   # room again: the same socket gets it
        status = await receive_json(third)
        assert (status["status"], status["mode"]) == ("listening", "duplex")
        for ws in (second, third):
            await ws.close()


# --- 9. engine-queue drops in the reports ----------------------------------------------------------

async def test_frames_the_engine_dropped_are_in_metrics_and_in_the_counter(monkeypatch):
    # like the real stream: its count goes with its slot when it closes
    monkeypatch.setattr(FakeStream, "frames_dropped", property(lambda self: 0 if self.closed.is_set() else 7))
    async with serving() as client:
        ws = await open_started(client)
        await ws.send_json({"type": "stop"})
        assert (await receive_json(ws))["type"] == "stop_acknowledged"
        metrics = await receive_json(ws)
        assert (metrics["type"], metrics["frames_dropped"]) == ("metrics", 7)
        assert await metric(client, "duplex_frames_dropped_total") == 7
        await ws.close()


async def test_the_metrics_event_counts_the_outbox_drops_of_its_own_conversation_only():
    from .test_server_inprocess import flood

    async with serving() as client:
        ws = await open_started(client)
        for conversation in range(2):
            if conversation:
                await ws.send_json({"type": "start"})
                assert (await receive_json(ws))["status"] == "listening"
            await flood(ws)
            await ws.send_json({"type": "stop"})
            assert (await receive_json(ws))["type"] == "stop_acknowledged"
            metrics = await receive_json(ws)
            assert (metrics["type"], metrics["frames_dropped"]) == ("metrics", 10)
            assert (await receive_json(ws))["status"] == "stopped"
        assert await metric(client, "duplex_frames_dropped_total") == 20
        await ws.close()
