"""The cascade (tiny STT + tiny TTS, LLM behind a local OpenAI-compatible stand-in) over the real protocol."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from duplex.bench.latency import LiveMic
from duplex.client import DuplexClient

from .conftest import espeak
from .llm_standin import reply_for


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, what is the weather like today?", tmp_path_factory.mktemp("c") / "h.wav")


async def conversation(server, **config):
    client = await DuplexClient.connect(server.http_url, codec="pcm16")
    await client.start(mode="cascade", config=config)
    status = await client.wait_for("status")
    assert status.data["mode"] == "cascade", status.data
    return client, LiveMic(client)


async def test_typed_turn_end_to_end(cascade_server, llm_standin):
    client, mic = await conversation(cascade_server, system_prompt="You are terse.")
    try:
        await client.text_input("hello there")
        assert (await client.wait_for("llm_status")).data["status"] == "processing"
        first_delta = await client.wait_for("llm_response")
        start = await client.wait_for("tts_start", timeout=30)
        await client.wait_for("tts_end", timeout=60)
        final = await client.wait_for("final_transcript", predicate=lambda e: e.data["role"] == "assistant")
        metrics = await client.wait_for("metrics")
        assert first_delta.received_at <= start.received_at + 1.0
        assert final.data["content"] == reply_for(2, long=False)        # system prompt + user turn
        assert metrics.data["response_latency_ms"] is not None
        for stage in ("llm_first_token_ms", "tts_first_audio_ms"):
            assert metrics.data[stage] >= 0
        assert client.binary_messages > 10
        assert llm_standin.requests[-1][0] == {"role": "system", "content": "You are terse."}
    finally:
        mic.close()
        await client.close()


async def test_spoken_turn_is_detected_and_answered(cascade_server, hello):
    client, mic = await conversation(cascade_server)
    try:
        mic.say(np.concatenate([np.zeros(4000, dtype=np.float32), hello]))
        user = await client.wait_for("final_transcript", timeout=20, predicate=lambda e: e.data["role"] == "user")
        assert user.data["content"]                      # the tiny STT babbles, but it does transcribe
        assert user.data["end_ms"] > user.data["start_ms"]
        await client.wait_for("tts_start", timeout=30)
        await client.wait_for("tts_end", timeout=60)
        metrics = await client.wait_for("metrics")
        assert metrics.data["response_latency_ms"] > 0   # end of speech -> first assistant audio
    finally:
        mic.close()
        await client.close()


async def test_interrupt_stops_audio_within_300_ms_and_keeps_only_heard_words(cascade_server, llm_standin):
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input("tell me a long story")
        await client.wait_for("tts_start", timeout=30)
        await client.wait_audio_frames(client.binary_messages + 12, timeout=20)   # ~1 s heard
        await client.interrupt()
        ack = await client.wait_for("interrupt_acknowledged")
        await client.wait_for("tts_stop")
        await asyncio.sleep(1.0)
        late = [c for c in client.audio if c.received_at > ack.received_at + 0.3]
        assert not late, f"{len(late)} audio frames arrived more than 300 ms after the acknowledgement"
        # the conversation goes on, and the history holds only what was played of the cut reply
        await client.text_input("and then?")
        await client.wait_for("tts_end", timeout=60)
        history = llm_standin.requests[-1]
        cut = history[-2]
        assert cut["role"] == "assistant"
        full = reply_for(2, long=True)  # the reply that was cut: to system + first user turn
        assert cut["content"] and full.startswith(cut["content"]) and len(cut["content"]) < len(full)
    finally:
        mic.close()
        await client.close()


async def test_barge_in_by_speech_cuts_the_assistant(cascade_server, hello):
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input("tell me a long story")
        await client.wait_for("tts_start", timeout=30)
        await client.wait_audio_frames(client.binary_messages + 6, timeout=20)
        mic.say(hello)
        stop = await client.wait_for("tts_stop", timeout=10)
        await asyncio.sleep(1.0)
        late = [c for c in client.audio if c.received_at > stop.received_at + 0.3]
        assert not late
        # the barge-in speech becomes the next user turn, and it is answered
        await client.wait_for("final_transcript", timeout=20, predicate=lambda e: e.data["role"] == "user")
        await client.wait_for("tts_start", timeout=30)
    finally:
        mic.close()
        await client.close()


async def test_conversations_keep_separate_histories_and_reset_clears_it(cascade_server, llm_standin):
    clients = [await conversation(cascade_server, system_prompt=f"agent {i}") for i in range(3)]
    try:
        for turn in range(2):
            for client, _ in clients:
                await client.text_input(f"turn {turn}")
            for client, _ in clients:
                await client.wait_for("tts_end", timeout=60)
        by_agent = {r[0]["content"]: r for r in llm_standin.requests if r[0]["content"].startswith("agent ")}
        for i in range(3):
            history = by_agent[f"agent {i}"]
            assert [m["content"] for m in history if m["role"] == "user"] == ["turn 0", "turn 1"]
        client, _ = clients[0]
        await client.reset()
        await client.wait_for("reset_acknowledged")
        await client.text_input("after reset")
        await client.wait_for("tts_end", timeout=60)
        assert [m["role"] for m in llm_standin.requests[-1]] == ["system", "user"]
        await client.stop()
        await client.wait_for("stop_acknowledged")
        await client.start(mode="cascade", config={"system_prompt": "agent 0"})
        await client.text_input("after stop")
        await client.wait_for("llm_status", timeout=10)
        await asyncio.sleep(0.5)
        assert [m["role"] for m in llm_standin.requests[-1]] == ["system", "user"]
    finally:
        for client, mic in clients:
            mic.close()
            await client.close()


@pytest.mark.parametrize("trouble", ["FAIL", "STALL", "GARBAGE"])
async def test_llm_endpoint_trouble_is_an_error_and_the_session_lives_on(cascade_server, trouble):
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input(f"please {trouble}")
        error = await client.wait_for("error", timeout=15)
        assert error.data["code"] == "internal" and "language model" in error.data["message"]
        await client.text_input("hello again")
        await client.wait_for("tts_end", timeout=60)
    finally:
        mic.close()
        await client.close()


async def test_auto_mode_falls_back_to_the_cascade_when_duplex_is_full(cascade_server):
    clients = [await DuplexClient.connect(cascade_server.http_url, mode="auto") for _ in range(3)]
    try:
        modes = []
        for client in clients:
            await client.start()
            modes.append((await client.wait_for("status")).data["mode"])
        assert modes == ["duplex", "duplex", "cascade"]       # --slots 2
        assert set(clients[0].ready["modes"]) == {"duplex", "cascade"}
        await clients[0].text_input("hi")
        assert (await clients[0].wait_for("error")).data["code"] == "unsupported"
    finally:
        for client in clients:
            await client.close()
