"""The cascade's STT and TTS in their own processes, over the real protocol (the default on CPU): a killed STT
child costs an error and the conversation goes on; two speaking turns share their TTS steps. (Its own file so
that these long tests run beside test_cascade.py's, not after them.)"""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from .conftest import espeak
from .test_cascade import conversation


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, what is the weather like today?", tmp_path_factory.mktemp("p") / "h.wav")


async def test_a_killed_stt_process_costs_an_error_and_the_conversation_goes_on(cascade_server, hello):
    """On CPU the STT runs in its own process (--stt-process auto): killing it fails the step that had the
    conversation's frame (one `error`, the frame counted as dropped), the next step restarts it, and the
    user's next turn is transcribed and answered."""
    from .helpers import health

    before = (await health(cascade_server.http_url))["engines"]["cascade"]["stt"]
    assert before["alive"] and before["process"], before
    client, mic = await conversation(cascade_server)
    try:
        await asyncio.sleep(0.5)                              # the mic's frames are being stepped
        os.kill(before["process"], signal.SIGKILL)
        error = await client.wait_for("error", timeout=20)
        assert error.data["code"] == "internal" and "speech recognition" in error.data["message"], error.data
        mic.say(np.concatenate([np.zeros(4000, dtype=np.float32), hello]))
        user = await client.wait_for("final_transcript", timeout=60, predicate=lambda e: e.data["role"] == "user")
        assert user.data["content"]
        await client.wait_for("tts_start", timeout=30)
        after = (await health(cascade_server.http_url))["engines"]["cascade"]["stt"]
        assert after["alive"] and after["restarts"] == before["restarts"] + 1, after
        assert after["process"] != before["process"]
    finally:
        mic.close()
        await client.close()


async def test_speaking_turns_share_their_tts_steps(cascade_server):
    """Two conversations speaking at once: a speaking turn's TTS step takes the other's next frames along
    (RIDE_ALONG_FRAMES), so the TTS runs about one step per frame of the longer turn, not one per frame of
    each. Counted in the TTS's own steps (`/health`), against the frames each turn played (`metrics`)."""
    from .helpers import health

    async def tts_steps() -> int:
        return (await health(cascade_server.http_url))["engines"]["cascade"]["tts"]["steps"]

    (a, mic_a), (b, mic_b) = await conversation(cascade_server), await conversation(cascade_server)
    try:
        before = await tts_steps()
        await a.text_input("tell me a long story")
        await a.wait_for("tts_start", timeout=30)
        await b.text_input("tell me a long story")
        await b.wait_for("tts_start", timeout=30)
        for client in (a, b):
            await client.wait_for("tts_end", timeout=90)
        frames = [(await client.wait_for("metrics")).data["frames_out"] for client in (a, b)]
        steps = await tts_steps() - before
        first = 2 * 19                          # each turn's delay steps before its first frame (tiny TTS)
        # one step per frame of each would be first + sum(frames); B started once A spoke, so most of B's
        # frames came while A was speaking: sharing saves at least half of B's
        assert min(frames) > 40, frames
        assert steps <= first + sum(frames) - min(frames) // 2, (steps, frames)
    finally:
        for mic, client in ((mic_a, a), (mic_b, b)):
            mic.close()
            await client.close()
