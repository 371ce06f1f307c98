"""Engine behaviour no other test touched, on real servers (tiny preset): reset gives a fresh
conversation, an interrupt's hold ends (and lasts while the user speaks), configure changes sampling,
slots come back after abrupt disconnects, input-queue overflow is counted, SIGTERM shuts down cleanly."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES
from duplex.client import DuplexClient
from duplex.server.process import ServerProcess, ServerStopError

from .conftest import start_server
from .helpers import GREEDY, frames_of, health, send_frames

HOLD_FRAMES = 5   # --interrupt-hold-ms 400
QUEUE_FRAMES = 4  # --max-queue-frames


@pytest.fixture(scope="module")
def hold_server(tmp_path_factory):
    """Duplex only, a short interrupt hold and a tiny input queue."""
    server = start_server(tmp_path_factory.mktemp("hold"), "--slots", "2", "--no-cascade",
                          "--interrupt-hold-ms", str(HOLD_FRAMES * 80), "--max-queue-frames", str(QUEUE_FRAMES))
    yield server
    server.stop()


SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.float32)


def loud(k: int) -> np.ndarray:
    return np.random.default_rng(k).uniform(-0.3, 0.3, FRAME_SAMPLES).astype(np.float32)


async def lockstep(client: DuplexClient, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Sends each frame once the previous one is answered (never more than one queued): the outputs."""
    first = client.binary_messages
    for k, frame in enumerate(frames):
        await client.send_audio(frame)
        await client.wait_audio_frames(first + k + 1, timeout=20)
    return [chunk.pcm for chunk in client.audio[first:first + len(frames)]]


async def greedy_run(url: str, frames: list[np.ndarray], reset_after: list[np.ndarray] | None = None,
                     configure: dict | None = None) -> list[np.ndarray]:
    async with await DuplexClient.connect(url, codec="pcm16") as client:
        await client.start(mode="duplex", config=GREEDY)
        await client.wait_for("status")
        out = await lockstep(client, frames)
        if reset_after is not None:
            await client.reset()
            await client.wait_for("reset_acknowledged")
            out = await lockstep(client, reset_after)
        if configure is not None:
            await client.configure(configure)
            out += await lockstep(client, frames)
        await client.stop()
        await client.wait_for("stop_acknowledged")
        return out


# --- 1. reset ---------------------------------------------------------------------------------------

async def test_after_a_reset_greedy_output_equals_a_fresh_conversations(tiny_server, speech):
    frames = frames_of(speech, 16)
    fresh = await greedy_run(tiny_server.http_url, frames)
    assert any(np.any(pcm != 0) for pcm in fresh)   # (the comparison is about something)
    other = [loud(k) for k in range(12)]
    after_reset = await greedy_run(tiny_server.http_url, other, reset_after=frames)
    assert len(after_reset) == len(fresh)
    for k, (a, b) in enumerate(zip(after_reset, fresh)):
        assert np.array_equal(a, b), f"frame {k} after the reset differs from a fresh conversation's"


# --- 2. interrupt hold ------------------------------------------------------------------------------

async def test_the_interrupt_hold_ends_after_its_time_and_lasts_while_the_user_speaks(hold_server):
    async with await DuplexClient.connect(hold_server.http_url, codec="pcm16") as client:
        await client.start(mode="duplex", config=GREEDY)
        await client.wait_for("status")
        before = await lockstep(client, [SILENCE] * 8)
        assert any(np.any(pcm != 0) for pcm in before[2:]), "the tiny model makes sound when not held"
        # a quiet user: silent for the hold, then the model speaks again
        await client.interrupt()
        await client.wait_for("interrupt_acknowledged")
        after = await lockstep(client, [SILENCE] * (HOLD_FRAMES + 8))
        assert all(np.all(pcm == 0) for pcm in after[:HOLD_FRAMES])
        assert any(np.any(pcm != 0) for pcm in after[HOLD_FRAMES:]), "the hold never ended"
        # a user who keeps speaking: silent well past the hold, for as long as they speak
        await client.interrupt()
        await client.wait_for("interrupt_acknowledged", predicate=lambda e: e.received_at > client.audio[-1].received_at)
        speaking = await lockstep(client, [loud(k) for k in range(3 * HOLD_FRAMES)])
        assert all(np.all(pcm == 0) for pcm in speaking), "the hold ended while the user was speaking"
        quiet = await lockstep(client, [SILENCE] * (HOLD_FRAMES + 12))
        assert any(np.any(pcm != 0) for pcm in quiet), "the hold never ended after the user stopped"


# --- 3. configure takes effect ----------------------------------------------------------------------

async def test_configure_mid_conversation_changes_sampling(tiny_server, speech):
    frames = frames_of(speech, 12)
    greedy = await greedy_run(tiny_server.http_url, frames, configure=GREEDY)
    sampled = await greedy_run(tiny_server.http_url, frames,
                               configure={"temperature": 1.0, "text_temperature": 1.0, "seed": 1})
    n = len(frames)
    assert all(np.array_equal(a, b) for a, b in zip(greedy[:n], sampled[:n]))   # the same until configure
    assert any(not np.array_equal(a, b) for a, b in zip(greedy[n:], sampled[n:])), "configure changed nothing"


# --- 6. slots come back after abrupt disconnects ------------------------------------------------------

async def abrupt_close(client: DuplexClient) -> None:
    """The TCP connection goes without a WebSocket close frame."""
    transport = client._ws._response.connection.transport
    transport.abort()
    client._reader.cancel()   # (its receive may not notice a local abort: close() would wait 5 s for it)
    await client.close()


async def wait_active(url: str, engine: str, n: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = await health(url)
        if state["engines"][engine]["active"] == n or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


async def test_an_abrupt_disconnect_in_cascade_frees_the_slots_and_ends_the_turn(cascade_server, llm_standin):
    url = cascade_server.http_url
    assert (await wait_active(url, "cascade", 0))["engines"]["cascade"]["active"] == 0
    async with await DuplexClient.connect(url, codec="pcm16") as client:   # (closed even if a step fails)
        await client.start(mode="cascade")
        await client.wait_for("status")
        requests = len(llm_standin.requests)
        await client.text_input("tell me something long")   # seconds of speech: the turn is alive when we go
        await client.wait_for("tts_start", timeout=20)
        state = await health(url)
        assert (state["engines"]["cascade"]["active"], state["engines"]["cascade"]["speaking"]) == (1, 1)
        await abrupt_close(client)
    state = await wait_active(url, "cascade", 0)
    # the turn went with the socket: its TTS slot at once, not when its playout would have ended
    assert (state["engines"]["cascade"]["active"], state["engines"]["cascade"]["speaking"]) == (0, 0)
    assert state["connections"] == 0
    assert len(llm_standin.requests) == requests + 1   # one request; nothing retried it for the vanished client
    # and the slot is really free: a new conversation takes it
    async with await DuplexClient.connect(url, codec="pcm16") as again:
        await again.start(mode="cascade")
        status = await again.wait_for("status")
        assert status.data["mode"] == "cascade"


async def test_an_abrupt_disconnect_frees_a_duplex_conversations_stt_slot(cascade_server, speech):
    url = cascade_server.http_url
    await wait_active(url, "cascade", 0)
    await wait_active(url, "duplex", 0)
    # A failed step must not leave this conversation open for the next test (issue 24, item 16): the
    # `async with` closes the client whatever happens, and its conversation goes with it.
    async with await DuplexClient.connect(url, codec="pcm16") as client:
        await client.start(mode="duplex", config={"transcribe_user": True})
        await client.wait_for("status")
        await send_frames(client, frames_of(speech, 5))
        await client.wait_audio_frames(5, timeout=20)
        state = await health(url)
        assert (state["engines"]["duplex"]["active"], state["engines"]["cascade"]["active"]) == (1, 1)
        await abrupt_close(client)
    state = await wait_active(url, "cascade", 0)
    assert (state["engines"]["duplex"]["active"], state["engines"]["cascade"]["active"]) == (0, 0)


async def test_an_abrupt_disconnect_on_api_chat_frees_the_slot(cascade_server):
    import sphn

    url = cascade_server.http_url
    await wait_active(url, "duplex", 0)
    async with aiohttp.ClientSession() as session:   # (closed, and its socket with it, even if a step fails)
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "/api/chat")
        assert (await ws.receive(timeout=10)).data == b"\x00"
        writer = sphn.OpusStreamWriter(24000)
        for k in range(4):
            await ws.send_bytes(b"\x01" + writer.append_pcm(loud(k)))
        assert (await health(url))["engines"]["duplex"]["active"] == 1
        ws._response.connection.transport.abort()
    state = await wait_active(url, "duplex", 0)
    assert (state["engines"]["duplex"]["active"], state["connections"]) == (0, 0)


# --- 9. input-queue overflow ------------------------------------------------------------------------

async def test_frames_dropped_by_a_full_input_queue_are_reported(hold_server):
    url = hold_server.http_url

    async def dropped_total() -> float:
        async with aiohttp.ClientSession() as session:
            text = await (await session.get(url + "/metrics")).text()
        match = re.search(r"^duplex_frames_dropped_total (\S+)$", text, re.MULTILINE)
        assert match is not None
        return float(match.group(1))

    before = await dropped_total()
    sent = 60
    async with await DuplexClient.connect(url, codec="pcm16") as client:
        await client.start(mode="duplex")
        await client.wait_for("status")
        # one message of 60 frames: all queued at once, far faster than real time, past a 4-frame queue
        await client.send_audio(np.concatenate([loud(k) for k in range(sent)]))
        await asyncio.sleep(0.5)
        await client.stop()
        await client.wait_for("stop_acknowledged")
        metrics = await client.wait_for("metrics", predicate=lambda e: "frames_dropped" in e.data
                                        and e.data["response_latency_ms"] is None and e.data["frames_in"] == sent)
    dropped = metrics.data["frames_dropped"]
    assert dropped > 0 and metrics.data["frames_out"] <= sent - dropped
    assert await dropped_total() - before == dropped


# --- 8. SIGTERM -------------------------------------------------------------------------------------

async def test_sigterm_closes_clients_1001_and_exits_0(tmp_path):
    server = ServerProcess("--slots", "1", "--no-cascade", log_path=tmp_path / "server.log", log_level="info")
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.ws_url + "?codec=pcm16", autoclose=False)
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "ready"
            await ws.send_json({"type": "start", "mode": "duplex"})
            assert json.loads((await ws.receive(timeout=10)).data)["status"] == "listening"
            server.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            msg = await ws.receive(timeout=20)
            while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):   # (a metrics event, say)
                msg = await ws.receive(timeout=20)
            assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1001, "server shutting down")
            await ws.close()
        code = await asyncio.to_thread(server.process.wait, 20)
        assert code == 0 and time.monotonic() - started < 20
    finally:
        server.stop()   # a no-op once it has exited
    assert "shutting down" in server.log()


def stand_in(tmp_path, program: str) -> ServerProcess:
    """A ServerProcess around a small Python child instead of a real server (its stop() is under test)."""
    server = object.__new__(ServerProcess)
    server.log_path = tmp_path / "server.log"
    server.log_path.write_text("line 1\nserving on http://127.0.0.1:1\n")
    server.process = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n" + program])
    time.sleep(0.5)   # (its signal handler is in place)
    return server


def test_process_stop_fails_loudly_on_a_hung_or_failed_shutdown(tmp_path):
    hung = stand_in(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)")
    with pytest.raises(ServerStopError, match=r"did not exit within 0\.5 s of SIGTERM \(killed\); log tail:\n"
                                              r"line 1\nserving on"):
        hung.stop(timeout=0.5)
    assert hung.process.returncode == -signal.SIGKILL   # killed, not left behind
    hung.stop()   # already gone: no second error
    failing = stand_in(tmp_path, "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\ntime.sleep(60)")
    with pytest.raises(ServerStopError, match=r"exited with code 3 after SIGTERM; log tail:\nline 1"):
        failing.stop()
    clean = stand_in(tmp_path, "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(60)")
    clean.stop()
    assert clean.process.returncode == 0
