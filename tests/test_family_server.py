"""Hibiki-Zero's and J-Moshi's layouts through a real server: `duplex serve --preset tiny-hibiki-zero` /
`--preset tiny-jmoshi` (4 slots, duplex only, recording), real speech.

Per preset: /ws (the text stream is the model's: the translation for Hibiki-Zero, Japanese for J-Moshi,
whose byte-fallback pieces arrive joined into characters, never as `<0xE3>`), the recording of it replayed
bit for bit through the server, /api/chat with Kyutai's protocol (handshake, Opus both ways, UTF-8 text),
/v1/realtime (audio deltas and the transcript inside responses), four conversations at once each
answered frame for frame, and the persona and guidance keys refused with `unsupported` (neither model
takes one: Hibiki-Zero has no conditioner and no source-language input).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

import aiohttp
import numpy as np
import pytest
import sphn

from duplex.audio import FRAME_SAMPLES, float_to_pcm16
from duplex.client import DuplexClient
from duplex.client.replay import load_recording
from duplex.client.replay import replay as replay_through

from .conftest import start_server
from .helpers import GREEDY, frames_of, send_frames

PRESETS = {"tiny-hibiki-zero": "tiny:hibiki-zero", "tiny-jmoshi": "tiny:jmoshi"}


@pytest.fixture(scope="module", params=list(PRESETS))
def family_server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    server = start_server(tmp, "--preset", request.param, "--slots", "4", "--no-cascade", "--record", str(tmp / "rec"))
    server.preset = request.param
    server.records = tmp / "rec"
    yield server
    server.stop()


def clean(text: str) -> bool:
    """Text as a person reads it: no byte pieces, no half characters (U+FFFD only from a cut byte run)."""
    return "<0x" not in text and "\u2581" not in text


async def completed_meta(folder, timeout: float = 60.0) -> dict:
    """The recording's meta.json once its writer thread has closed it (`complete`): `stop_acknowledged` reaches
    the client before the writer has written the last events (on a busy machine, well before)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except ValueError:   # caught while the writer rewrites it
            meta = {}
        if meta.get("complete"):
            return meta
        assert asyncio.get_running_loop().time() < deadline, f"{folder} not complete within {timeout} s: {meta}"
        await asyncio.sleep(0.05)


async def test_ws_conversation_and_its_recording_replays_bit_for_bit(family_server, speech) -> None:
    before = {p.name for p in family_server.records.iterdir()} if family_server.records.exists() else set()
    async with await DuplexClient.connect(family_server.ws_url, codec="pcm16") as client:
        await client.start(mode="duplex", config=GREEDY)
        await client.wait_for("status")
        await send_frames(client, frames_of(speech, 24))
        await client.wait_audio_frames(24, timeout=60)
        await client.stop()
        await client.wait_for("stop_acknowledged")
        text = "".join(e.data["content"] for e in client.events_of("llm_response"))
        assert client.events_of("error") == [] and np.abs(client.assistant_pcm()).max() > 0
    assert text and clean(text), text
    [folder] = [p for p in family_server.records.iterdir() if p.is_dir() and p.name not in before]
    meta = await completed_meta(folder)
    assert meta["models"]["duplex"] == PRESETS[family_server.preset], meta["models"]
    assert not meta["summary"]["dropped"], meta["summary"]   # nothing lost to a slow writer, so all must match
    rec = load_recording(folder)
    assert rec.assistant_text() == text
    outcome = await replay_through(rec, family_server.http_url, fast=True, timeout=60.0)
    assert outcome.exact, outcome.lines


async def test_api_chat_speaks_kyutai_protocol(family_server, speech) -> None:
    url = family_server.http_url.replace("http://", "ws://") + "/api/chat?text_temperature=0&audio_temperature=0"
    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    text, heard = b"", 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            assert await ws.receive_bytes(timeout=30) == b"\x00"
            for frame in frames_of(speech, 24):
                page = writer.append_pcm(frame)
                if len(page):
                    await ws.send_bytes(b"\x01" + page)
            while heard < 10 * FRAME_SAMPLES:
                message = await ws.receive_bytes(timeout=30)
                assert message[0] in (1, 2), message[:1]
                if message[0] == 1:
                    heard += reader.append_bytes(message[1:]).shape[-1]
                else:
                    text += message[1:]
    assert clean(text.decode("utf-8"))     # each piece is whole UTF-8 on its own: no split characters


async def test_realtime_streams_audio_and_the_transcript_in_responses(family_server, speech) -> None:
    frames = frames_of(speech, 40)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(family_server.http_url + "/v1/realtime?model=duplex") as ws:
            assert (await ws.receive_json(timeout=30))["type"] == "session.created"
            for frame in frames:
                await ws.send_json({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(float_to_pcm16(frame)).decode()})
            events: list[dict] = []
            while sum(e["type"] == "response.output_audio.delta" for e in events) < 5:
                events.append(await ws.receive_json(timeout=60))
    opened = {e["response"]["id"] for e in events if e["type"] == "response.created"}
    audio = [e for e in events if e["type"] == "response.output_audio.delta"]
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    assert opened and all(e["response_id"] in opened for e in audio)
    assert clean(transcript) and not [e for e in events if e["type"] == "error"]


async def test_four_conversations_at_once_are_each_answered_frame_for_frame(family_server, speech) -> None:
    frames = frames_of(speech, 16)

    async def one(seed: int) -> int:
        async with await DuplexClient.connect(family_server.ws_url, codec="opus") as client:
            await client.start(mode="duplex", config={"temperature": 0.8, "seed": seed})
            await client.wait_for("status")
            await send_frames(client, frames, realtime=True)
            await client.wait_audio_frames(len(frames), timeout=60)
            return client.binary_messages

    assert await asyncio.gather(*(one(s) for s in range(4))) == [len(frames)] * 4


@pytest.mark.parametrize("config", [{"voice": "NATF2"}, {"system_prompt": "translate politely"},
                                    {"cfg_coef": 3.0}, {"condition": "very_good"}])
async def test_persona_and_guidance_keys_are_refused_with_unsupported(family_server, config) -> None:
    """Neither model has a persona prompt nor a conditioner (Hibiki-Zero runs at cfg_coef 1, unconditioned)."""
    async with await DuplexClient.connect(family_server.ws_url) as client:
        await client.start(mode="duplex", config=config)
        error = await client.wait_for("error")
        assert error.data["code"] == "unsupported", error.data
        await client.start(mode="duplex", config=GREEDY)     # the socket still works
        await client.wait_for("status")


def test_presets_name_the_real_repos() -> None:
    from duplex.models.spec import HIBIKI_ZERO_REVISION
    from duplex.models.spec import PRESETS as ALL

    assert ALL["hibiki-zero"].duplex_spec == f"kyutai/hibiki-zero-3b-pytorch-bf16@{HIBIKI_ZERO_REVISION}"
    assert ALL["j-moshi"].duplex_spec == "nu-dialogue/j-moshi-ext"
    assert {ALL[name].duplex_spec for name in PRESETS} == set(PRESETS.values())


def test_the_j_moshi_preset_loads_a_hub_cache_without_config_json_as_moshi_does(tmp_path) -> None:
    """`--preset j-moshi` offline, its three files (the tiny ones) in a Hugging Face cache: moshi's own
    `from_hf_repo` finds no config.json and reads them as a Moshi 7B (lm_config None), through our spec."""
    import subprocess
    import sys

    from duplex.models.spec import model_directory
    from duplex.server.process import REPO

    source = model_directory("tiny:jmoshi")
    assert source is not None
    repo = tmp_path / "hub" / "models--nu-dialogue--j-moshi-ext"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors", "tokenizer_spm_32k_3.model"):
        (snapshot / name).symlink_to(source / name)
    code = ("from duplex.models.spec import PRESETS, resolve_checkpoint\n"
            "c = resolve_checkpoint(PRESETS['j-moshi'].duplex_spec)\n"
            "print(c.lm_config, c.model_type, c.moshi_weights.name, c.tokenizer.name)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "moshi", "model.safetensors", "tokenizer_spm_32k_3.model"]
    assert "Assuming this is a Moshi 7B" in done.stderr     # moshi's own warning for a repo without config.json
