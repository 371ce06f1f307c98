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
        # text_input -> first assistant audio, in ms, measured by the session; the engine's stage times
        # count from the same text_input and stamp the first audio in the same loop callback, so the two
        # agree to well under a millisecond (50 ms: room for a busy machine, below the ~200 ms the LLM
        # and the TTS's text-to-audio delay take here)
        latency = metrics.data["response_latency_ms"]
        assert 0 < metrics.data["llm_first_token_ms"] <= metrics.data["tts_first_audio_ms"], metrics.data
        assert abs(latency - metrics.data["tts_first_audio_ms"]) < 50, metrics.data
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


def most_words_heard(frames_played: int) -> int:
    """The most words whose audio can have started within `frames_played` 80 ms frames.

    The tiny TTS speaks about one word per 3-4 frames, and never faster than one per 2 frames (each
    word is at least one text token plus PADDING_BETWEEN = 1 forced pad); the history keeps the words
    that started before the last played frame. The reply the LLM wrote ahead of playback is far
    longer (the long reply has 70 words, all streamed in under a second), so this bound tells "what
    was heard" from "what was generated or synthesised beyond it"; a TTS look-ahead of a few frames
    (1-2 words) is within its slack.
    """
    return frames_played // 2 + 1


def check_cut_reply(history: list[dict], frames_played: int) -> None:
    """The history's last assistant message is the start of the cut reply, only the words played."""
    cut = history[-2]
    assert cut["role"] == "assistant", history
    full = reply_for(2, long=True)  # the reply that was cut: to system + first user turn
    assert cut["content"] and full.startswith(cut["content"]), (cut, full)
    words = cut["content"].split()
    assert full.split()[: len(words)] == words, (cut, full)     # whole words, not a cut one
    assert len(words) <= most_words_heard(frames_played), (cut, frames_played)


async def next_request(llm_standin, n: int, timeout: float = 10.0) -> list[dict]:
    """The LLM request number `n` (0-based), waited for; the stand-in records it on arrival."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(llm_standin.requests) <= n:
        assert loop.time() < deadline, f"no LLM request #{n} within {timeout} s"
        await asyncio.sleep(0.02)
    return llm_standin.requests[n]


async def test_interrupt_stops_audio_within_300_ms_and_keeps_only_heard_words(cascade_server, llm_standin):
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input("tell me a long story")
        await client.wait_for("tts_start", timeout=30)
        await client.wait_audio_frames(client.binary_messages + 12, timeout=20)   # ~1 s heard
        await client.interrupt()
        ack = await client.wait_for("interrupt_acknowledged")
        await client.wait_for("tts_stop")
        cut_metrics = await client.wait_for("metrics")   # the cut turn's: frames_out = frames played
        played = cut_metrics.data["frames_out"]
        assert sum(c.received_at < ack.received_at for c in client.audio) <= played
        # the conversation goes on, and the history holds only what was played of the cut reply
        n = len(llm_standin.requests)
        await client.text_input("and then?")
        next_start = await client.wait_for("tts_start", timeout=30)
        # the cut turn's frames all come before the next turn's tts_start (one ordered socket)
        late = [c for c in client.audio if ack.received_at + 0.3 < c.received_at < next_start.received_at]
        assert not late, f"{len(late)} audio frames arrived more than 300 ms after the acknowledgement"
        check_cut_reply(await next_request(llm_standin, n), played)
        await client.wait_for("tts_end", timeout=60)
    finally:
        mic.close()
        await client.close()


async def test_barge_in_by_speech_cuts_the_assistant(cascade_server, hello, llm_standin):
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input("tell me a long story")
        await client.wait_for("tts_start", timeout=30)
        n = len(llm_standin.requests)    # the story's request came before its audio
        await client.wait_audio_frames(client.binary_messages + 6, timeout=20)
        mic.say(hello)
        stop = await client.wait_for("tts_stop", timeout=10)
        cut_metrics = await client.wait_for("metrics")   # the cut turn's: frames_out = frames played
        # the barge-in speech becomes the next user turn, and it is answered
        user = await client.wait_for("final_transcript", timeout=20,   # (the typed turn had its own)
                                     predicate=lambda e: e.data["role"] == "user" and e.received_at > stop.received_at)
        next_start = await client.wait_for("tts_start", timeout=30)
        late = [c for c in client.audio if stop.received_at + 0.3 < c.received_at < next_start.received_at]
        assert not late
        history = await next_request(llm_standin, n)
        assert history[-1] == {"role": "user", "content": user.data["content"]}, history
        check_cut_reply(history, cut_metrics.data["frames_out"])
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
        n = len(llm_standin.requests)
        await client.text_input("after reset")
        await client.wait_for("tts_end", timeout=60)
        assert await next_request(llm_standin, n) == [{"role": "system", "content": "agent 0"},
                                                       {"role": "user", "content": "after reset"}]
        await client.stop()
        await client.wait_for("stop_acknowledged")
        await client.start(mode="cascade", config={"system_prompt": "agent 0"})
        n = len(llm_standin.requests)
        await client.text_input("after stop")
        assert await next_request(llm_standin, n) == [{"role": "system", "content": "agent 0"},
                                                       {"role": "user", "content": "after stop"}]
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


async def test_health_says_which_end_of_turn_rule_is_live(cascade_server):
    """The tiny STT has a pause head with random weights: auto picks the energy rule, and says why."""
    from .helpers import health

    rule = (await health(cascade_server.http_url))["engines"]["cascade"]["end_of_turn"]
    assert rule["rule"] == "energy" and "random weights" in rule["why"], rule


async def test_text_top_k_reaches_the_llm_only_when_set(cascade_server, llm_standin):
    """`text_top_k` is the LLM's top-k: an OpenAI-compatible endpoint gets it as vLLM's `top_k`, from `start`
    and from `configure`; a conversation that sets none sends none (OpenAI's own API has no such field)."""
    client, mic = await conversation(cascade_server, system_prompt="top-k check", text_top_k=3, top_k=1)
    try:
        for turn, expected in enumerate((3, 7)):
            if turn:
                await client.configure({"text_top_k": 7})
            await client.text_input("hello there")
            await client.wait_for("tts_end", timeout=60)
            assert llm_standin.bodies[-1]["messages"][0]["content"] == "top-k check"
            assert llm_standin.bodies[-1]["top_k"] == expected
        assert not [e for e in client.events if e.type == "error"]   # the TTS took top_k=1 too
    finally:
        mic.close()
        await client.close()
    client, mic = await conversation(cascade_server, system_prompt="no top-k")
    try:
        await client.text_input("hello there")
        await client.wait_for("tts_end", timeout=60)
        assert llm_standin.bodies[-1]["messages"][0]["content"] == "no top-k" and "top_k" not in llm_standin.bodies[-1]
    finally:
        mic.close()
        await client.close()


async def test_the_llm_is_read_no_faster_than_the_tts_takes_up_words(cascade_server, llm_standin):
    """Pacing (`--llm-words-ahead`, 4 here): the server reads the LLM's reply at most 4 words ahead of what the
    TTS has taken up, so the reply's text reaches the client about as fast as it is spoken, not all at once
    (the stand-in streams its ~50 words within a fraction of a second). Counted in audio frames: the TTS takes
    a word at most every 2 steps, each step is a frame, and its first frame comes `first_audio_steps` (19)
    steps after its first word; so by the last delta the server had taken up >= words - 5 words and made
    >= 2 (words - 5) - 19 frames, and sent all but the 5 it may hold back for playout."""
    client, mic = await conversation(cascade_server)
    try:
        await client.text_input("tell me a long story")
        reply = reply_for(2, long=True)
        words = len(reply.split())

        def last_delta():   # the llm_response that completes the reply's text, once it has come
            text = ""
            for event in client.events:
                if event.type == "llm_response":
                    text += event.data["content"]
                    if len(text.split()) == words:
                        return event
            return None

        done = await client.wait_until(last_delta, timeout=60, what="the whole reply's text")
        heard_by_then = sum(c.received_at <= done.received_at for c in client.audio)
        assert heard_by_then >= 2 * (words - 5) - 19 - 5 - 2, (heard_by_then, words)   # 2: frames in flight
        await client.wait_for("tts_end", timeout=60)
    finally:
        mic.close()
        await client.close()
