"""/api/chat speaks Kyutai's moshi byte protocol: what moshi.client and the moshi web client do."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import numpy as np
import sphn

from duplex.server.moshi_compat import config_from_query

from .helpers import frames_of, health, wait_until_idle

# The query string moshi's web client sends (sampling knobs plus ones we ignore).
WEB_CLIENT_QUERY = ("text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250"
                    "&pad_mult=0&text_seed=123&audio_seed=456&repetition_penalty_context=64"
                    "&repetition_penalty=1.0")


async def moshi_peer(url: str, frames: list[np.ndarray]) -> dict:
    """Byte for byte what moshi's clients do: 0x01 + Ogg Opus pages out; 0x00/0x01/0x02 in."""
    writer = sphn.OpusStreamWriter(24000)
    reader = sphn.OpusStreamReader(24000)
    kinds: list[int] = []
    pcm_out = []
    text = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/api/chat?{WEB_CLIENT_QUERY}") as ws:
            first = await ws.receive_bytes(timeout=10)
            assert first == b"\x00", "the handshake byte must come first"

            all_audio = asyncio.Event()

            async def receive() -> None:
                async for message in ws:
                    assert message.type == aiohttp.WSMsgType.BINARY, "moshi's protocol is binary only"
                    kinds.append(message.data[0])
                    if kinds.count(1) >= len(frames):
                        all_audio.set()
                    if message.data[0] == 1:
                        pcm_out.append(reader.append_bytes(message.data[1:]))
                    elif message.data[0] == 2:
                        text.append(message.data[1:].decode("utf-8"))

            receiver = asyncio.create_task(receive())
            start = time.monotonic()
            for k, frame in enumerate(frames):
                page = writer.append_pcm(frame)
                if len(page) > 0:
                    await ws.send_bytes(b"\x01" + page)
                await asyncio.sleep(max(0.0, start + (k + 1) * 0.08 - time.monotonic()))
            with contextlib.suppress(asyncio.TimeoutError):  # the assertions below say what was missing
                await asyncio.wait_for(all_audio.wait(), timeout=10)
            await ws.close()
            await receiver
    return {"audio_pages": kinds.count(1), "text": text, "kinds": set(kinds),
            "samples": int(sum(p.size for p in pcm_out))}


async def test_several_moshi_clients_at_once(tiny_server, speech):
    frames = frames_of(speech, 30)
    await wait_until_idle(tiny_server.http_url)   # earlier tests' slots are gone: the end state is ours
    before = await health(tiny_server.http_url)
    results = await asyncio.gather(*(moshi_peer(tiny_server.http_url, frames) for _ in range(3)))
    for result in results:
        assert result["kinds"] <= {1, 2}
        assert result["audio_pages"] == len(frames)   # one Ogg page per 80 ms frame
        assert result["samples"] >= (len(frames) - 1) * 1920
        assert result["text"], "the model's text stream comes as 0x02 messages"
    after = await health(tiny_server.http_url)
    assert after["frames_out"] - before["frames_out"] >= 3 * len(frames)
    # every /api/chat slot is freed when its socket closes (within one loop turn; the bound is generous)
    await wait_until_idle(tiny_server.http_url)


def test_web_client_query_maps_to_sampling_config():
    from multidict import MultiDict

    config = config_from_query(MultiDict(pair.split("=") for pair in WEB_CLIENT_QUERY.split("&")))
    assert config == {"temperature": 0.8, "text_temperature": 0.7, "top_k": 250, "text_top_k": 25, "seed": 456}
    clamped = config_from_query({"audio_topk": "100000", "audio_temperature": "-3"})
    assert clamped == {"top_k": 500, "temperature": 0.0}
