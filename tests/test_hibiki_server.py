"""Hibiki through the real server: `duplex serve --preset tiny-hibiki --record DIR`, every endpoint.

One server for the module (4 slots, duplex only, recording). The guided model serves many conversations at
once, each with its own `cfg_coef` and `condition` (config keys, at `start` and by `configure`): a greedy
guided conversation is bit-identical alone and beside neighbours that join, reset and leave; its text stream
(the translation) comes as `llm_response` on /ws, as 0x02 text on /api/chat (Kyutai's protocol) and as the
output transcript on /v1/realtime; Kyutai's `moshi.client` talks to it as to Moshi; its recording replays
bit for bit with `duplex replay`. A condition the model does not know is `bad_message` naming its values;
a model without guidance refuses both keys.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import sphn
import torch

from duplex.client import DuplexClient
from duplex.engines.base import Unsupported
from duplex.server.process import REPO

from .conftest import start_server
from .helpers import GREEDY, frames_of, health, wait_until_idle
from .test_duplex_batching import churning_neighbour, run_reference
from .test_kyutai_clients import private_pulse, speech_for_mic  # noqa: F401 (fixtures)
from .test_kyutai_clients import test_moshi_python_client_talks_to_api_chat as moshi_client_session
from .test_realtime import realtime, send_audio

GUIDED = {**GREEDY, "cfg_coef": 3.0, "condition": "good"}
# A random model's text at cfg 1 with sampling: pieces come (greedy and guided, its text is mostly padding)
TALKATIVE = {"temperature": 0.8, "text_temperature": 0.8, "seed": 1}


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hibiki-rec")


@pytest.fixture(scope="module")
def hibiki_server(tmp_path_factory, record_dir):
    server = start_server(tmp_path_factory.mktemp("hibiki"), "--preset", "tiny-hibiki", "--slots", "4",
                          "--no-cascade", "--record", str(record_dir))
    yield server
    server.stop()


async def test_health_says_guided(hibiki_server) -> None:
    duplex = (await health(hibiki_server.http_url))["engines"]["duplex"]
    assert duplex["guided"] is True and duplex["persona"] is False


async def test_a_guided_greedy_conversation_is_bit_identical_whatever_the_neighbours_do(hibiki_server, speech):
    frames = frames_of(speech, 30)
    alone_pcm, alone_text = await run_reference(hibiki_server.http_url, frames, GUIDED)
    assert alone_pcm.size == 30 * 1920 and np.abs(alone_pcm).max() > 0
    unguided_pcm, _ = await run_reference(hibiki_server.http_url, frames, GREEDY)
    assert not np.array_equal(unguided_pcm, alone_pcm), "cfg_coef and condition changed nothing"

    stop = asyncio.Event()
    heard: list[list[float]] = [[] for _ in range(2)]
    answered = [asyncio.Event() for _ in range(2)]
    neighbours = [asyncio.create_task(churning_neighbour(hibiki_server.http_url, frames, stop, seed, heard[seed],
                                                         answered[seed])) for seed in range(2)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in answered)), timeout=60)
    window: list[float] = []
    busy_pcm, busy_text = await run_reference(hibiki_server.http_url, frames, GUIDED, window)
    stop.set()
    await asyncio.gather(*neighbours)
    during = [sum(window[0] <= t <= window[1] for t in times) for times in heard]
    assert all(n >= 1 for n in during), f"neighbour frames answered during the reference run: {during}"
    assert busy_text == alone_text
    assert np.array_equal(busy_pcm, alone_pcm), "a neighbour changed this guided conversation's output"


async def test_ws_text_is_the_translation_and_the_keys_are_checked(hibiki_server, speech) -> None:
    async with await DuplexClient.connect(hibiki_server.ws_url) as client:
        await client.start(mode="duplex", config={**TALKATIVE, "condition": "great"})
        error = await client.wait_for("error")
        assert error.data["code"] == "bad_message" and "very_good" in error.data["message"]
        await client.start(mode="duplex", config=TALKATIVE)
        await client.wait_for("status", predicate=lambda e: e.data["status"] == "listening")
        for frame in frames_of(speech, 20):
            await client.send_audio(frame)
        await client.wait_audio_frames(20, timeout=60)
        await client.configure({"cfg_coef": 1.5, "condition": "neutral"})       # mid-conversation: taken
        for frame in frames_of(speech, 30)[20:]:
            await client.send_audio(frame)
        await client.wait_audio_frames(30, timeout=60)
        assert client.events_of("error")[1:] == []
        assert "".join(e.data["content"] for e in client.events_of("llm_response")).strip()


async def test_api_chat_sends_the_translation_as_text(hibiki_server, speech) -> None:
    """Kyutai's protocol: handshake 0x00, Opus 0x01 both ways, the text stream as 0x02 pieces."""
    await wait_until_idle(hibiki_server.http_url)
    url = hibiki_server.http_url.replace("http://", "ws://") + "/api/chat?text_temperature=0.8&audio_temperature=0.8&text_seed=1"
    writer = sphn.OpusStreamWriter(24000)
    kinds: list[int] = []
    text: list[str] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            assert await ws.receive_bytes(timeout=30) == b"\x00"
            for frame in frames_of(speech, 40):
                page = writer.append_pcm(frame)
                if len(page):
                    await ws.send_bytes(b"\x01" + page)
                await asyncio.sleep(0.02)
            while kinds.count(1) < 10 or not text:
                message = await ws.receive_bytes(timeout=30)
                kinds.append(message[0])
                if message[0] == 2:
                    text.append(message[1:].decode())
    assert set(kinds) <= {1, 2} and "".join(text).strip()


def test_kyutai_moshi_client_talks_to_a_hibiki_server(hibiki_server, private_pulse, speech_for_mic, tmp_path):  # noqa: F811
    """`python -m moshi.client`, unchanged, with a private sound card: what it does against tiny Moshi."""
    moshi_client_session(hibiki_server, private_pulse, speech_for_mic, tmp_path)


async def test_realtime_transcript_is_the_translation(hibiki_server, speech) -> None:
    await wait_until_idle(hibiki_server.http_url)
    async with realtime(hibiki_server, "duplex") as (connection, events):
        await events.wait_for("session.created")
        await connection.session.update(session={"type": "realtime", "temperature": 0.8})
        await events.wait_for("session.updated")
        frames = len(speech) // 1920
        await send_audio(connection, speech[: frames * 1920], chunk_frames=1)
        created = await events.wait_for("response.created", timeout=60)
        delta = await events.wait_for("response.output_audio_transcript.delta",
                                      lambda e: e.response_id == created.response.id, timeout=60)
        assert delta.delta
        await connection.response.cancel()
        await events.wait_for("response.done")


async def test_the_recording_of_a_guided_conversation_replays_bit_for_bit(hibiki_server, record_dir, speech) -> None:
    await wait_until_idle(hibiki_server.http_url)
    before = {p.name for p in record_dir.iterdir()}
    async with await DuplexClient.connect(hibiki_server.ws_url, codec="pcm16") as client:
        await client.start(mode="duplex", config=GUIDED)
        await client.wait_for("status")
        for frame in frames_of(speech, 12):
            await client.send_audio(frame)
        await client.wait_audio_frames(12, timeout=60)
        await client.configure({"cfg_coef": 1.5})
        for frame in frames_of(speech, 24)[12:]:
            await client.send_audio(frame)
        await client.wait_audio_frames(24, timeout=60)
        await client.stop()
        await client.wait_for("stop_acknowledged")
    await wait_until_idle(hibiki_server.http_url)
    [folder] = [p for p in record_dir.iterdir() if p.is_dir() and p.name not in before]
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "duplex", "replay", folder.name, "--url",
                                                    hibiki_server.http_url, "--fast"],
                                   capture_output=True, text=True, cwd=REPO, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reproduces bit for bit: 24 frames of assistant audio" in done.stdout, done.stdout
    assert "'cfg_coef': 3.0" in done.stdout and "'condition': 'good'" in done.stdout


def test_a_model_without_guidance_refuses_its_keys() -> None:
    from duplex.engines.duplex import DuplexEngine
    from duplex.models.moshi_batch import MoshiBatch
    from duplex.models.spec import resolve_checkpoint

    engine = DuplexEngine(MoshiBatch(resolve_checkpoint("tiny:moshi"), 2, "cpu", torch.float32))
    assert engine.health()["guided"] is False
    for config in ({"cfg_coef": 3.0}, {"condition": "very_good"}):
        with pytest.raises(Unsupported, match="no guidance"):
            engine.check_config(config)


async def test_a_slots_next_conversation_does_not_inherit_its_settings() -> None:
    """A conversation with the default config, in the slot a guided greedy one just left, gets the defaults
    (before: only a config that differed from the defaults reconfigured the slot)."""
    from duplex.engines.duplex import DuplexEngine
    from duplex.models.moshi_batch import MoshiBatch
    from duplex.models.spec import resolve_checkpoint

    model = MoshiBatch(resolve_checkpoint("tiny:hibiki"), 2, "cpu", torch.float32)
    engine = DuplexEngine(model)
    await engine.start()
    try:
        def settled() -> None:   # the model thread runs calls in order: once this one ran, the earlier ones did
            engine.scheduler.worker.submit(lambda: None).result()
        first = engine.open(GUIDED, lambda event: None)
        settled()
        assert first.slot is not None and first.slot.index == 0
        assert model.settings[0].cfg_coef == 3.0 and float(model.guidance.coef[0]) == 3.0
        first.close()
        second = engine.open({}, lambda event: None)
        settled()
        assert second.slot is not None and second.slot.index == 0
        assert model.settings[0] == model.defaults and float(model.guidance.coef[0]) == 1.0
        second.close()
    finally:
        await engine.stop()
