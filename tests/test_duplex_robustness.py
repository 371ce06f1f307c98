"""Bad input, abandoned sockets, capacity and access control, each while a neighbour keeps going."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest

from duplex.client import DuplexClient, ServerClosed

from .helpers import frames_of, health, send_frames, wait_until_idle


async def steady_neighbour(url: str, frames: list[np.ndarray], done: asyncio.Event) -> tuple[int, int]:
    """Streams at real-time pace until `done`; returns (frames sent, frames received)."""
    async with await DuplexClient.connect(url, codec="pcm16") as client:
        await client.start(mode="duplex")
        await client.wait_for("status")
        sent = 0
        start = time.monotonic()
        while not done.is_set() or sent < 25:
            await client.send_audio(frames[sent % len(frames)])
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.08 - time.monotonic()))
        await client.wait_audio_frames(sent, timeout=10)
        return sent, client.binary_messages


# Bad `start` messages are sent before any conversation has started: after one, every `start`
# (valid or not) would be refused as "already started", so only here do they reach the validation.
BAD_STARTS = [
    json.dumps({"type": "start", "mode": "duplex", "config": {"bogus": 1}}),
    json.dumps({"type": "start", "mode": "duplex", "config": {"temperature": "hot"}}),
    json.dumps({"type": "start", "mode": "telepathy"}),
]

BAD_INPUTS = [
    ("text", "{not json", "bad_message"),
    ("text", json.dumps([1, 2, 3]), "bad_message"),
    ("text", json.dumps({"no_type": 1}), "bad_message"),
    ("text", json.dumps({"type": "dance"}), "bad_message"),
    ("text", json.dumps({"type": "text_input"}), "bad_message"),
    ("text", "x" * 70_000, "too_large"),
    ("bytes", b"", "bad_message"),
    ("bytes", b"\x07hello", "bad_message"),
    ("bytes", b"\x01" + b"\x00" * 300_000, "too_large"),
    ("bytes", b"\x01" + b"this is not an ogg page at all", "bad_audio"),
]


async def test_every_bad_input_gets_its_error_and_the_neighbour_is_unaffected(tiny_server, speech):
    done = asyncio.Event()
    neighbour = asyncio.create_task(steady_neighbour(tiny_server.http_url, frames_of(speech), done))
    async with await DuplexClient.connect(tiny_server.http_url, codec="opus") as client:
        await client.send_audio(frames_of(speech, 1)[0])           # before start
        assert (await client.wait_for("error")).data["code"] == "not_started"
        await client.interrupt()                                   # control before start
        assert (await client.wait_for("error")).data["code"] == "not_started"
        for payload in BAD_STARTS:                                 # refused by validation, not "already started"
            await client.send_text_raw(payload)
            error = await client.wait_for("error", timeout=10)
            assert error.data["code"] == "bad_message", (payload, error.data)
            assert "already started" not in error.data["message"], (payload, error.data)
        await client.start(mode="duplex")                          # no bad start began a conversation
        assert (await client.wait_for("status")).data["status"] == "listening"
        assert len(client.events_of("error")) == 2 + len(BAD_STARTS)   # nothing refused the valid start
        for kind, payload, code in BAD_INPUTS:
            if kind == "text":
                await client.send_text_raw(payload)
            else:
                await client.send_bytes_raw(payload)
            error = await client.wait_for("error", timeout=10)
            assert error.data["code"] == code, (payload[:40], error.data)
            assert error.data["message"]
        # after all that, this conversation still works: the Opus reader resynced on the next page
        await send_frames(client, frames_of(speech, 10))
        await client.wait_audio_frames(9, timeout=10)
        await client.start()                                       # already started
        assert (await client.wait_for("error")).data["code"] == "bad_message"
        await client.stop()
        await client.wait_for("stop_acknowledged")
    done.set()
    sent, received = await neighbour
    assert sent >= 25 and received == sent


async def test_too_many_bad_messages_close_the_socket(tiny_server):
    async with await DuplexClient.connect(tiny_server.http_url) as client:
        with pytest.raises(ServerClosed):
            for _ in range(200):
                await client.send_text_raw("{")
                await asyncio.sleep(0.002)
            await client.wait_for("never", timeout=10)
        assert client.close_code == 1008


async def test_abandoned_connections_free_their_slots(tiny_server, speech):
    await wait_until_idle(tiny_server.http_url)
    frames = frames_of(speech, 5)
    sessions = []
    for _ in range(4):
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(tiny_server.ws_url + "?codec=pcm16")
        await ws.receive_str()                                         # ready
        await ws.send_str(json.dumps({"type": "start", "mode": "duplex"}))
        for frame in frames:
            await ws.send_bytes(b"\x01" + (frame * 32767).astype("<i2").tobytes())
        sessions.append((session, ws))
    state = await health(tiny_server.http_url)
    assert state["engines"]["duplex"]["active"] >= 4
    for session, ws in sessions:  # vanish without a close handshake
        ws._response.connection.transport.abort()
        await session.close()
    await wait_until_idle(tiny_server.http_url)   # fails the test if the slots stay taken


async def test_capacity_and_auto_mode(small_server, speech):
    token = "s3cret"
    first = await DuplexClient.connect(small_server.http_url, token=token, codec="pcm16")
    second = await DuplexClient.connect(small_server.http_url, token=token, codec="pcm16", token_in_header=True)
    third = await DuplexClient.connect(small_server.http_url, token=token, codec="pcm16")
    try:
        await first.start(mode="duplex")
        await second.start(mode="auto")
        assert (await second.wait_for("status")).data["mode"] == "duplex"
        await first.wait_for("status")
        await third.start(mode="duplex")
        assert (await third.wait_for("error")).data["code"] == "capacity"
        await third.start(mode="cascade")  # not loaded on this server
        assert (await third.wait_for("error")).data["code"] == "unsupported"
        await first.stop()
        await first.wait_for("stop_acknowledged")
        await third.start(mode="duplex")   # the freed slot is taken at once
        assert (await third.wait_for("status")).data["status"] == "listening"
        await send_frames(third, frames_of(speech, 3))
        await third.wait_audio_frames(3)
    finally:
        for client in (first, second, third):
            await client.close()


async def test_token_is_required_and_checked(small_server):
    with pytest.raises(ServerClosed) as refused:
        await DuplexClient.connect(small_server.http_url, token="wrong")
    assert "unauthorized" in str(refused.value)
    with pytest.raises(ServerClosed):
        await DuplexClient.connect(small_server.http_url)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as http_refused:
            await session.ws_connect(small_server.http_url + "/api/chat?token=wrong")
        assert http_refused.value.status == 401
    async with await DuplexClient.connect(small_server.http_url, token="s3cret") as client:
        assert client.ready["protocol"] == 1
