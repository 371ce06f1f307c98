"""/api/chat speaks Kyutai's moshi byte protocol: what moshi.client and the moshi web client do."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

import aiohttp
import numpy as np
import sphn
from aiohttp import WSMsgType

from duplex.server.protocols.moshi import config_from_query

from .helpers import frames_of, health, wait_until_idle
from .test_server_inprocess import TIMEOUT, FakeEngine, metric, serving

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


# --- Kyutai's other kinds (0x00, 0x03-0x09): docs/moshi-compat.md, "Every kind" ------------------------

ACCEPTED = [                      # what a client may send that needs no answer
    b"\x00\x00\x00",             # the web client's handshake form (kind, version, model)
    b"\x00" + bytes(8),            # the Rust server's form (u32 protocol version, u32 model version)
    b'\x04{"client": "test"}',     # metadata
    b"\x03\x00",                  # control: start (the conversation began at the upgrade)
    b"\x05the client's own error",  # a client's error report: logged
]
REFUSED = [                       # (message, the code of the 0x05 error that answers it)
    (b"\x02hello", "unsupported"),     # text input
    (b"\x03\x01", "unsupported"),      # control: endTurn
    (b"\x03\x02", "unsupported"),      # control: pause
    (b"\x08image", "unsupported"),     # Kyutai's Rust server: image
    (b"\x09codes", "unsupported"),     # Kyutai's Rust server: audio codes
    (b"\x03\x09", "bad_message"),      # control: no such action
    (b"\x03", "bad_message"),          # control without its action byte
    (b"\x07\x05colour", "bad_message"),  # coloured text goes from server to client only
    (b"\x42", "bad_message"),          # no such kind
    (b"", "bad_message"),              # empty
    ("a text frame", "bad_message"),   # the protocol is binary only
    (b"\x01" + b"not an Ogg page: 27 bytes or more of garbage", "bad_audio"),
]


async def send(ws, message: bytes | str) -> None:
    await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))


async def receive_binary(ws) -> bytes:
    msg = await ws.receive(timeout=TIMEOUT * 5)
    assert msg.type == WSMsgType.BINARY, (msg.type, msg.data, msg.extra)
    return msg.data


def error_codes(metrics_text: str) -> dict[str, float]:
    return {code: float(n) for code, n in re.findall(r'^duplex_errors_total\{code="(\w+)"\} (\S+)$',
                                                     metrics_text, re.MULTILINE)}


async def test_every_kind_against_the_real_server(tiny_server, speech):
    """Byte level, tiny model: a ping is answered with a ping, the accepted kinds get nothing, each refused
    message gets its coded 0x05 error in order, the errors are counted, and after all that (and a control
    `restart`) the conversation still answers one Ogg page per frame."""
    async with aiohttp.ClientSession() as session:
        async with session.get(tiny_server.http_url + "/metrics") as response:
            before = error_codes(await response.text())
        async with session.ws_connect(f"{tiny_server.http_url}/api/chat?{WEB_CLIENT_QUERY}") as ws:
            assert await receive_binary(ws) == b"\x00"
            for message in ACCEPTED:
                await ws.send_bytes(message)
            await ws.send_bytes(b"\x06")
            assert await receive_binary(ws) == b"\x06", "nothing before the pong: the accepted kinds got no answer"
            for message, _ in REFUSED:
                await send(ws, message)
            answers = [await receive_binary(ws) for _ in REFUSED]
            assert [a[:1] for a in answers] == [b"\x05"] * len(REFUSED), answers
            assert [a[1:].decode().split(": ", 1)[0] for a in answers] == [code for _, code in REFUSED], answers

            writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
            frames = frames_of(speech, 20)

            async def talk(frames: list[np.ndarray]) -> int:
                """Sends the frames; returns the samples decoded from the one page per frame that comes back."""
                for frame in frames:
                    page = writer.append_pcm(frame)
                    if len(page):
                        await ws.send_bytes(b"\x01" + page)
                samples = pages = 0
                while pages < len(frames):
                    data = await receive_binary(ws)
                    assert data[0] in (1, 2), data[:80]   # audio and text only: no error for good audio
                    if data[0] == 1:
                        pages += 1
                        samples += reader.append_bytes(data[1:]).size
                return samples

            assert await talk(frames[:10]) >= 9 * 1920
            await ws.send_bytes(b"\x03\x03")   # restart: the slot's state is wiped, the socket goes on
            assert await talk(frames[10:]) >= 9 * 1920
        async with session.get(tiny_server.http_url + "/metrics") as response:
            after = error_codes(await response.text())
    for code in ("unsupported", "bad_message", "bad_audio"):
        assert after.get(code, 0) - before.get(code, 0) == sum(c == code for _, c in REFUSED), (code, before, after)
    await wait_until_idle(tiny_server.http_url)


async def test_kinds_in_process_restart_resets_and_too_many_bad_messages_close_1008():
    """The fake engine counts what the codec asks of it: `restart` is the stream's reset, the others touch
    nothing; refused messages past the limit (50) close the socket 1008, `unsupported` ones do not count."""
    engine = FakeEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/api/chat")
        assert await receive_binary(ws) == b"\x00"
        await ws.send_bytes(b"\x03\x03")
        await ws.send_bytes(b"\x06")
        assert await receive_binary(ws) == b"\x06"
        assert (engine.calls["reset"], engine.calls["push_audio"], engine.calls["close"]) == (1, 0, 0)
        for _ in range(60):   # not counted towards the limit: a client may send endTurn at every turn
            await ws.send_bytes(b"\x03\x01")
        big = b"\x01" + bytes(256 * 1024)
        await ws.send_bytes(big)
        answers = [(await receive_binary(ws)).split(b": ", 1)[0] for _ in range(61)]
        assert answers == [b"\x05unsupported"] * 60 + [b"\x05too_large"]
        for _ in range(50):   # with the too_large one: 51 refused messages
            await ws.send_bytes(b"\xff")
        for _ in range(50):
            assert (await receive_binary(ws)).startswith(b"\x05bad_message: unknown message kind 0xff")
        msg = await ws.receive(timeout=TIMEOUT)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "more than 50 bad messages")
        await asyncio.wait_for(engine.streams[0].closed.wait(), TIMEOUT)
        assert await metric(client, "duplex_errors_total", '{code="bad_message"}') == 50
        assert await metric(client, "duplex_errors_total", '{code="too_large"}') == 1
        assert await metric(client, "duplex_connections_open", '{endpoint="api_chat"}') == 0
