"""Personas through the real server: `duplex serve --preset tiny-personaplex`, its voices, /ws and /api/chat.

One server for the module (4 slots, duplex only). A persona's voice and role prompt come as the config's
`voice` and `system_prompt` on /ws and as PersonaPlex's query parameters on /api/chat, where the
handshake byte comes once the persona is in; the second conversation with a persona starts from the
prefix cache (/health, /metrics); bad voice names are refused with `unsupported`, and a model without
persona support refuses persona keys the same way.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import sphn
import torch

from duplex.client import DuplexClient
from duplex.engines.base import Unsupported
from duplex.models.persona import PersonaError, VoiceLibrary, wrap_system_tags
from duplex.server.protocols.moshi import config_from_query

from .conftest import start_server
from .helpers import GREEDY, health, send_frames, wait_until_health

PERSONAPLEX_QUERY = ("text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250&pad_mult=0"
                     "&text_seed=1&audio_seed=2&repetition_penalty_context=64&repetition_penalty=1.0"
                     "&text_prompt=You%20enjoy%20having%20a%20good%20conversation.&voice_prompt=NATF2.pt")


@pytest.fixture(scope="module")
def persona_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("persona"), "--preset", "tiny-personaplex", "--slots", "4",
                          "--no-cascade")
    yield server
    server.stop()


def silence(n: int) -> list[np.ndarray]:
    return [np.zeros(1920, dtype=np.float32) for _ in range(n)]


async def test_health_lists_persona_support_and_voices(persona_server) -> None:
    duplex = (await health(persona_server.http_url))["engines"]["duplex"]
    assert duplex["persona"] is True
    assert {"NATF2.wav", "NATM1.wav"} <= set(duplex["voices"])
    assert set(duplex["prefix_cache"]) == {"entries", "bytes", "hits", "misses"}


async def test_ws_persona_conversation_and_the_cached_second_one(persona_server) -> None:
    config = {"voice": "NATM1", "system_prompt": "You like trains.", **GREEDY}
    before = (await health(persona_server.http_url))["engines"]["duplex"]["prefix_cache"]
    for run in range(2):
        async with await DuplexClient.connect(persona_server.ws_url) as client:
            await client.start(mode="duplex", config=config)
            await client.wait_for("status", predicate=lambda e: e.data["status"] == "listening")
            await send_frames(client, silence(8))
            await client.wait_audio_frames(8, timeout=20)
            if run == 0:      # reset puts the persona back (from the cache) and the conversation goes on
                await client.reset()
                await client.wait_for("reset_acknowledged")
                await send_frames(client, silence(4))
                await client.wait_audio_frames(12, timeout=20)
            assert client.events_of("error") == []
    after = (await health(persona_server.http_url))["engines"]["duplex"]["prefix_cache"]
    assert after["entries"] == before["entries"] + 1
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"] + 2
    async with aiohttp.ClientSession() as session:
        async with session.get(persona_server.http_url + "/metrics") as response:
            text = await response.text()
    assert f'duplex_persona_prefix_cache{{what="bytes"}} {float(after["bytes"])}' in text


@pytest.mark.parametrize("voice", ["../tiny-moshi/config.json", "/etc/passwd", "voices/NATF2.wav", "..", "nobody"])
async def test_bad_voice_names_are_refused(persona_server, voice) -> None:
    async with await DuplexClient.connect(persona_server.ws_url) as client:
        await client.start(mode="duplex", config={"voice": voice})
        error = await client.wait_for("error")
        assert error.data["code"] == "bad_message" and "voice" in error.data["message"]   # as the cascade's voices
        await client.start(mode="duplex", config={"voice": "NATF2.wav"})   # the socket still works
        await client.wait_for("status", predicate=lambda e: e.data["status"] == "listening")
        await client.configure({"system_prompt": "now be someone else"})
        assert (await client.wait_for("error")).data["code"] == "unsupported"   # persona: at `start` only


async def test_personaplex_web_client_query_on_api_chat(persona_server) -> None:
    """PersonaPlex's client: its query (voice NATF2.pt), the handshake once the persona is in, audio back."""
    url = persona_server.http_url.replace("http://", "ws://") + "/api/chat?" + PERSONAPLEX_QUERY
    writer = sphn.OpusStreamWriter(24000)
    kinds: list[int] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            assert await ws.receive_bytes(timeout=20) == b"\x00"
            for frame in silence(10):
                page = writer.append_pcm(frame)
                if len(page):
                    await ws.send_bytes(b"\x01" + page)
                await asyncio.sleep(0.02)
            while kinds.count(1) < 5:
                kinds.append((await ws.receive_bytes(timeout=20))[0])
    assert set(kinds) <= {1, 2}


async def test_realtime_instructions_and_voice_are_the_duplex_persona(persona_server) -> None:
    """/v1/realtime on a persona model: `session.update` instructions + voice restart the duplex conversation
    with that persona (prefilled: a new prefix-cache entry); a bad voice is refused and the persona kept."""
    persona = {"instructions": "You collect stamps.", "audio": {"output": {"voice": "NATF2"}}}
    before = (await health(persona_server.http_url))["engines"]["duplex"]["prefix_cache"]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(persona_server.http_url + "/v1/realtime?model=duplex") as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "session.created"

            async def update(session: dict, event_id: str) -> list[dict]:
                await ws.send_json({"type": "session.update", "event_id": event_id, "session": session})
                events = [await ws.receive_json(timeout=10)]
                while events[-1]["type"] != "session.updated":
                    events.append(await ws.receive_json(timeout=10))
                return events

            [updated] = await update(persona, "e1")
            assert updated["session"]["instructions"] == "You collect stamps."
            assert updated["session"]["audio"]["output"]["voice"] == "NATF2"
            await wait_until_health(persona_server.http_url,
                                    lambda h: h["engines"]["duplex"]["prefix_cache"]["entries"] > before["entries"],
                                    "the persona prefilled into the prefix cache", timeout=60)
            *errors, updated = await update({"audio": {"output": {"voice": "../NATF2"}}}, "e2")
            assert [(e["type"], e["error"]["code"], e["error"]["event_id"], e["error"]["param"]) for e in errors] == \
                [("error", "unsupported", "e2", "session.audio.output.voice")]
            assert updated["session"]["audio"]["output"]["voice"] == "NATF2"   # the persona in use is kept


def test_personaplex_query_parameters_map_to_the_config() -> None:
    query = dict(p.split("=") for p in PERSONAPLEX_QUERY.replace("%20", " ").split("&"))
    config = config_from_query({**query, "seed": "-1"})
    assert config["voice"] == "NATF2.pt" and config["system_prompt"] == "You enjoy having a good conversation."
    assert config["seed"] == 2         # audio_seed (moshi's names first); PersonaPlex's seed=-1 means none
    assert config_from_query({**query, "seed": "42"})["seed"] == 42
    assert "voice" not in config_from_query({"voice_prompt": "", "text_prompt": " "})


def test_voice_library_serves_only_its_own_files(tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "ALICE.wav").write_bytes(b"x")
    (voices / "BOB.pt").write_bytes(b"x")
    (tmp_path / "secret.wav").write_bytes(b"x")
    os.symlink(tmp_path / "secret.wav", voices / "LINK.wav")
    library = VoiceLibrary(voices, lambda pcm: torch.zeros(8, 1, dtype=torch.long))
    assert library.names() == ["ALICE.wav", "BOB.pt"]            # the link out of the folder is not served
    assert library.path("ALICE") == library.path("ALICE.pt") == library.path("ALICE.wav") == voices.resolve() / "ALICE.wav"
    for bad in ("../secret.wav", "LINK.wav", "LINK", "/etc/passwd", "a/ALICE.wav", "..", "", "ALICE\\..\\x"):
        with pytest.raises(PersonaError):
            library.path(bad)
    assert library.path("BOB") == library.path("BOB.pt") == voices.resolve() / "BOB.pt"   # PersonaPlex's own
    with pytest.raises(PersonaError, match="unknown voice"):
        library.path("CAROL.pt")


def test_system_tags_are_added_once() -> None:
    assert wrap_system_tags(" Be kind. ") == "<system> Be kind. <system>"
    assert wrap_system_tags("<system> Be kind. <system>") == "<system> Be kind. <system>"


def test_a_model_without_persona_support_refuses_persona_keys() -> None:
    from duplex.engines.duplex import DuplexEngine
    from duplex.models.moshi_batch import MoshiBatch
    from duplex.models.spec import resolve_checkpoint

    engine = DuplexEngine(MoshiBatch(resolve_checkpoint("tiny:moshi"), 2, "cpu", torch.float32))
    assert engine.health()["persona"] is False
    for config in ({"system_prompt": "be a pirate"}, {"voice": "NATF2"}):
        with pytest.raises(Unsupported, match="no persona support"):
            engine.check_config(config)
    engine.check_config({"temperature": 0.5})
