"""The /ws protocol on a real server (tiny preset): frames, the control flow, acknowledgements."""

from __future__ import annotations

import numpy as np
import pytest

from duplex.audio import FRAME_SAMPLES
from duplex.client import DuplexClient

from .helpers import GREEDY, frames_of, health, send_frames, wait_until_health, wait_until_idle

# A bound against a hang, not a speed check: with test files in parallel processes on a busy 2-core machine the
# tiny server falls behind real time and catches up (its queue keeps every frame), so waits are generous.
WAIT_S = 60


@pytest.mark.parametrize("codec", ["pcm16", "opus"])
async def test_one_output_frame_per_input_frame(tiny_server, speech, codec):
    before = await health(tiny_server.http_url)
    frames = frames_of(speech, 30)
    async with await DuplexClient.connect(tiny_server.http_url, codec=codec) as client:
        assert client.ready["protocol"] == 1
        assert client.ready["audio"] == {"codec": codec, "sample_rate": 24000, "frame_ms": 80}
        assert "duplex" in client.ready["modes"]
        await client.start(mode="duplex")
        status = await client.wait_for("status")
        assert status.data["status"] == "listening" and status.data["mode"] == "duplex"
        await send_frames(client, frames)
        await client.wait_audio_frames(len(frames), timeout=WAIT_S)
        await client.stop()
        await client.wait_for("stop_acknowledged")
        assert client.binary_messages == len(frames)  # exactly one per consumed frame, no more
        if codec == "pcm16":
            assert all(chunk.pcm.size == FRAME_SAMPLES for chunk in client.audio)
        else:  # one Ogg page per 80 ms frame; decoded audio covers every frame
            assert client.assistant_pcm().size >= (len(frames) - 1) * FRAME_SAMPLES
        # every message carries the session id
        assert all(e.data.get("session_id") == client.session_id for e in client.events)
    after = await health(tiny_server.http_url)
    assert after["frames_in"] - before["frames_in"] >= len(frames)
    assert after["frames_out"] - before["frames_out"] >= len(frames)


async def test_start_stream_interrupt_reset_stop_flow(tiny_server, speech):
    frames = frames_of(speech)
    async with await DuplexClient.connect(tiny_server.http_url, codec="pcm16") as client:
        await client.start(mode="duplex", config={"temperature": 0.8, "seed": 7})
        await client.wait_for("status", predicate=lambda e: e.data["status"] == "listening")
        await send_frames(client, frames[:20])
        await client.wait_audio_frames(20, timeout=WAIT_S)

        # interrupt: acknowledged, tts_stop, and every frame after the acknowledgement is silent
        await client.interrupt()
        ack = await client.wait_for("interrupt_acknowledged")
        await client.wait_for("tts_stop")
        after_ack = client.binary_messages
        await send_frames(client, frames[20:30])
        await client.wait_audio_frames(30, timeout=WAIT_S)
        heard = [c.pcm for c in client.audio if c.received_at < ack.received_at]
        assert any(np.any(pcm != 0) for pcm in heard), "the assistant was never audible before the interrupt"
        silenced = [c.pcm for c in client.audio if c.received_at > ack.received_at]
        assert len(silenced) >= 30 - after_ack
        assert all(np.all(pcm == 0) for pcm in silenced), "assistant audio after interrupt must be silent"

        # reset: acknowledged, and the conversation goes on listening (frames still answered)
        await client.reset()
        await client.wait_for("reset_acknowledged")
        await send_frames(client, frames[30:40])
        await client.wait_audio_frames(40, timeout=WAIT_S)

        # stop: acknowledged with queues cleared, then status stopped; audio is refused afterwards
        await client.stop()
        stop_ack = await client.wait_for("stop_acknowledged")
        assert stop_ack.data["queues_cleared"] is True
        await client.wait_for("status", predicate=lambda e: e.data["status"] == "stopped")
        metrics = client.events_of("metrics")[-1]  # the one sent on stop (turns send their own)
        assert metrics.data["frames_in"] == 40 and metrics.data["frames_out"] == 40
        await client.send_audio(frames[0])
        error = await client.wait_for("error")
        assert error.data["code"] == "not_started"

        # a new conversation on the same socket works
        await client.start(mode="duplex")
        await client.wait_for("status", predicate=lambda e: e.data["status"] == "listening")
        await send_frames(client, frames[:5])
        await client.wait_audio_frames(45, timeout=WAIT_S)


def check_assistant_segments(events) -> int:
    """Every assistant partial/final transcript is the whole segment so far: exactly the text deltas
    (`llm_response`) since the last final transcript. Returns how many deltas the open segment has."""
    segment, deltas = "", 0
    for event in events:
        if event.type == "llm_response" and not event.data["is_complete"]:
            segment += event.data["content"]
            deltas += 1
        elif event.type in ("partial_transcript", "final_transcript") and event.data["role"] == "assistant":
            assert event.data["content"] == segment.strip(), (event.data, segment)
            if event.type == "final_transcript":
                segment, deltas = "", 0
    return deltas


async def test_model_text_stream_becomes_llm_response_and_transcripts(tiny_server, speech):
    """Random tiny weights still emit text tokens: they must come out as deltas and segments."""
    frames = frames_of(speech)
    async with await DuplexClient.connect(tiny_server.http_url, codec="pcm16") as client:
        await client.start(mode="duplex", config=GREEDY)
        # stream until the assistant is mid-turn (greedy: the same frame every run)
        sent = 0
        for frame in frames:
            await client.send_audio(frame)
            sent += 1
            await client.wait_audio_frames(sent, timeout=WAIT_S)
            # mid-turn, with a segment of several deltas (a partial that is more than its last delta)
            if client.events_of("status")[-1].data["status"] == "speaking" and check_assistant_segments(
                    client.events) >= 2:
                break
        assert client.events_of("status")[-1].data["status"] == "speaking", "the assistant never spoke"
        assert check_assistant_segments(client.events) >= 2, "no segment of several text deltas"
        await client.interrupt()  # ends the turn: its final transcript and metrics follow, before any stop
        ack = await client.wait_for("interrupt_acknowledged")
        await client.wait_for("tts_stop")
        metrics = await client.wait_for("metrics", timeout=10)
        final = await client.wait_for("final_transcript", predicate=lambda e: e.data["role"] == "assistant")
        assert ack.received_at <= final.received_at <= metrics.received_at
        assert final.data["content"] and final.data["end_ms"] >= final.data["start_ms"]
        assert metrics.data["frames_in"] == sent and metrics.data["frames_out"] == sent
        assert not client.events_of("tts_end"), "an interrupted turn ends with tts_stop, not tts_end"
        assert (await client.wait_for("status", predicate=lambda e: e.received_at >= ack.received_at)
                ).data["status"] == "listening"
        check_assistant_segments(client.events)
        await client.stop()
        await client.wait_for("stop_acknowledged")


async def test_configure_mid_conversation(tiny_server, speech):
    async with await DuplexClient.connect(tiny_server.http_url, codec="pcm16") as client:
        await client.start(mode="duplex")
        await client.configure({"temperature": 0.5, "top_k": 50})
        await client.configure({"system_prompt": "be nice"})  # not a duplex setting
        error = await client.wait_for("error")
        assert error.data["code"] == "unsupported"
        await client.configure({"no_such_key": 1})
        error = await client.wait_for("error")
        assert error.data["code"] == "bad_message"
        await client.text_input("hello")
        error = await client.wait_for("error")
        assert error.data["code"] == "unsupported"
        await send_frames(client, frames_of(speech, 5))
        await client.wait_audio_frames(5)


async def test_transcribe_user_gives_duplex_conversations_user_transcripts(tiny_server, speech):
    """The cascade's speech recogniser also serves duplex sessions that ask for it."""
    frames = frames_of(speech) + [np.zeros(FRAME_SAMPLES, dtype=np.float32)] * 12
    await wait_until_idle(tiny_server.http_url, engine="cascade")   # no STT slot taken but ours
    async with await DuplexClient.connect(tiny_server.http_url, codec="pcm16") as client:
        await client.start(mode="duplex", config={"transcribe_user": True})
        await client.wait_for("status")
        await send_frames(client, frames, realtime=True)
        final = await client.wait_for("final_transcript", timeout=WAIT_S, predicate=lambda e: e.data["role"] == "user")
        assert final.data["content"] and final.data["end_ms"] > final.data["start_ms"]
        partials = [e for e in client.events_of("partial_transcript") if e.data["role"] == "user"]
        assert partials and partials[0].received_at < final.received_at
        await client.wait_audio_frames(len(frames), timeout=WAIT_S)
        assert client.binary_messages == len(frames)
        await wait_until_health(tiny_server.http_url, lambda s: s["engines"]["cascade"]["active"] == 1,
                                "the conversation's STT slot")
        await client.configure({"transcribe_user": False})   # and off again: the STT slot is freed
        await wait_until_idle(tiny_server.http_url, engine="cascade")
        await client.stop()
        await client.wait_for("stop_acknowledged")


async def test_transcribe_user_without_a_recogniser_is_unsupported(small_server):
    async with await DuplexClient.connect(small_server.http_url, token="s3cret") as client:
        await client.start(mode="duplex", config={"transcribe_user": True})
        error = await client.wait_for("error")
        assert error.data["code"] == "unsupported" and "recogniser" in error.data["message"]
        await client.start(mode="duplex")     # the refused start left no slot behind
        assert (await client.wait_for("status")).data["status"] == "listening"
