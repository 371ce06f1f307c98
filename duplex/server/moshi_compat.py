"""`/api/chat`: Kyutai's moshi byte protocol on top of the duplex engine.

Binary only: the server sends 0x00 once the conversation is ready; 0x01 + Ogg Opus pages go both
ways; the server sends 0x02 + UTF-8 pieces of the model's text stream. Kyutai's web client and
`python -m moshi.client` work unchanged, and many at once (each takes a batch slot, where
moshi.server serves one conversation at a time behind a global lock).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from .. import protocol
from ..audio import BadAudio, FrameAssembler, OpusDecoder, OpusEncoder
from ..config import CONFIG_SCHEMA
from ..engines.base import AssistantAudio, AssistantText, CapacityError, EngineFrame, UserFrame
from .outbox import Outbox, SlowReader

log = logging.getLogger(__name__)

# moshi's web client query names -> our config keys (unknown names, e.g. pad_mult, are ignored).
QUERY_FLOATS = {"audio_temperature": "temperature", "text_temperature": "text_temperature"}
QUERY_INTS = {"audio_topk": "top_k", "text_topk": "text_top_k", "audio_seed": "seed", "text_seed": "seed"}


def config_from_query(query) -> dict:
    """The config from moshi's query parameters, each brought into the schema's range (never refused)."""
    config: dict = {}
    for name, key in QUERY_FLOATS.items():
        if name in query:
            config[key] = CONFIG_SCHEMA[key].fit(float(query[name]))
    for name, key in QUERY_INTS.items():
        if name in query and key not in config:
            config[key] = CONFIG_SCHEMA[key].fit(int(float(query[name])))
    return config


async def handle_chat(request: web.Request) -> web.StreamResponse:
    app = request.app
    engine = app["engines"].get("duplex")
    metrics = app["metrics"]
    ws = web.WebSocketResponse(max_msg_size=app["settings"].max_message_bytes)
    await ws.prepare(request)
    if engine is None:
        await ws.close(code=1011, message=b"no duplex model loaded")
        return ws
    try:
        config = config_from_query(request.query)
    except ValueError as exc:
        await ws.close(code=1008, message=f"bad query parameter: {exc}".encode()[:120])
        return ws

    outbox = Outbox()
    encoder = OpusEncoder()

    def sink(frame: EngineFrame) -> None:
        if isinstance(frame, AssistantAudio):
            metrics.frame_out(frame.turnaround_ms)
            outbox.put_audio(frame.pcm)
        elif isinstance(frame, AssistantText):
            outbox.put_text(frame.text)  # sent as 0x02 + utf-8 below

    try:
        stream = engine.open(config, sink)
    except CapacityError:
        await ws.close(code=1013, message=b"server full: every duplex slot is busy, try again later")
        return ws
    metrics.session_started("duplex")
    metrics.connections.labels("api_chat").inc()
    log.info("moshi-compatible conversation started (%s)", config or "default sampling")

    async def send_loop() -> None:
        while True:
            kind, payload = await outbox.get()
            if kind == "audio":
                page = encoder.encode(payload)
                if page:
                    await ws.send_bytes(bytes([protocol.KIND_AUDIO]) + page)
            else:
                await ws.send_bytes(bytes([protocol.KIND_TEXT]) + payload.encode())

    await ws.send_bytes(bytes([protocol.KIND_HANDSHAKE]))
    sender = asyncio.create_task(send_loop())
    decoder = OpusDecoder()
    frames = FrameAssembler()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY or not msg.data:
                continue  # moshi.server ignores these too
            if msg.data[0] != protocol.KIND_AUDIO:
                continue
            try:
                pcm = decoder.decode(msg.data[1:])
            except BadAudio as exc:
                log.warning("/api/chat: %s", exc)
                continue
            for samples in frames.push(pcm):
                metrics.frame_in()
                stream.push_audio(UserFrame.of(samples))
            if sender.done():
                break
    finally:
        too_slow = sender.done() and not sender.cancelled() and isinstance(sender.exception(), SlowReader)
        stream.close()
        sender.cancel()
        metrics.session_ended("duplex")
        metrics.connections.labels("api_chat").dec()
    if too_slow:
        await ws.close(code=1008, message=b"client too slow")
    return ws
