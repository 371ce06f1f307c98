"""`/api/chat`: Kyutai's moshi byte protocol on top of the duplex engine.

Binary only: the server sends 0x00 once the conversation is ready; 0x01 + Ogg Opus pages go both
ways; the server sends 0x02 + UTF-8 pieces of the model's text stream. Kyutai's web client and
`python -m moshi.client` work unchanged, and many at once (each takes a batch slot, where
moshi.server serves one conversation at a time behind a global lock). `MoshiCodec` is this
protocol's side of the connection lifecycle (`connection.py`); there is no Session here.
The conversation (and its batch slot) begins at the upgrade, so the start timeout runs until the first
audio message: a client that holds a slot and sends nothing is closed 1008 (no message: this protocol
has no error kind).
"""

from __future__ import annotations

import logging
import typing as tp

from aiohttp import web

from .. import protocol
from ..audio import BadAudio, FrameAssembler, OpusDecoder
from ..config import CONFIG_SCHEMA
from ..engines.base import (AssistantAudio, AssistantText, CapacityError, EngineFailure, EngineFrame, EngineStream,
                            StreamReady, Unsupported, UserFrame)
from .connection import Refusal, SocketCodec, serve_socket
from .metrics import ServerMetrics
from .opus_pool import AudioEncoder, audio_encoder
from .outbox import Outbox
from .state import ENGINES, METRICS, OPUS_POOL

log = logging.getLogger(__name__)

# moshi's web client query names -> our config keys (unknown names, e.g. pad_mult, are ignored).
QUERY_FLOATS = {"audio_temperature": "temperature", "text_temperature": "text_temperature"}
QUERY_INTS = {"audio_topk": "top_k", "text_topk": "text_top_k", "audio_seed": "seed", "text_seed": "seed"}
# PersonaPlex's server: the persona (role text, a voice file name such as NATF2.pt) and its seed (-1: none).
QUERY_PERSONA = {"text_prompt": "system_prompt", "voice_prompt": "voice"}


def config_from_query(query) -> dict:
    """The config from moshi's query parameters, each brought into the schema's range (never refused)."""
    config: dict = {}
    for name, key in QUERY_FLOATS.items():
        if name in query:
            config[key] = CONFIG_SCHEMA[key].fit(float(query[name]))
    for name, key in QUERY_INTS.items():
        if name in query and key not in config:
            config[key] = CONFIG_SCHEMA[key].fit(int(float(query[name])))
    for name, key in QUERY_PERSONA.items():
        if query.get(name, "").strip():
            config[key] = query[name]
    if "seed" in query and int(float(query["seed"])) != -1:
        config["seed"] = CONFIG_SCHEMA["seed"].fit(int(float(query["seed"])))
    return config


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await serve_socket(request, MoshiCodec())


class MoshiCodec(SocketCodec):
    """Moshi's byte protocol over one duplex stream; no Session (this protocol has no control messages)."""

    endpoint = "api_chat"
    slow_reader_reason = b"client too slow"
    metrics: ServerMetrics

    def __init__(self) -> None:
        self.outbox = Outbox()
        self.decoder = OpusDecoder()
        self.frames = FrameAssembler()
        self.stream: EngineStream | None = None
        self.encoder: AudioEncoder | None = None
        self.heard_audio = False   # a first 0x01 message came: the start timeout is over

    def on_open(self, request: web.Request) -> Refusal | None:
        engine = request.app[ENGINES].get("duplex")
        self.metrics = request.app[METRICS]
        self.encoder = audio_encoder(request.app.get(OPUS_POOL), "opus")
        if engine is None:
            return Refusal(1011, b"no duplex model loaded", label="no_model")
        try:
            config = config_from_query(request.query)
        except ValueError as exc:
            return Refusal(1008, f"bad query parameter: {exc}".encode()[:120], label="bad_query")
        try:
            self.stream = engine.open(config, self._sink)
        except CapacityError:
            return Refusal(1013, b"server full: every duplex slot is busy, try again later", label="no_slot")
        except Unsupported as exc:   # e.g. a persona asked of a model without one, an unknown voice
            return Refusal(1008, f"unsupported: {exc}".encode()[:120], label="unsupported")
        self.metrics.session_started("duplex")
        log.info("moshi-compatible conversation started (%s)", config or "default sampling")
        return None

    def _sink(self, frame: EngineFrame) -> None:
        if isinstance(frame, AssistantAudio):
            self.metrics.frame_out(frame.turnaround_ms)
            self.outbox.put_audio(frame.pcm)
        elif isinstance(frame, AssistantText):
            self.outbox.put_text(frame.text)  # sent as 0x02 + utf-8
        elif isinstance(frame, StreamReady):
            self.outbox.put_raw(bytes([protocol.KIND_HANDSHAKE]))   # the persona is in: now the handshake
        elif isinstance(frame, EngineFailure):
            log.warning("/api/chat: %s: %s", frame.code, frame.message)

    def greeting(self) -> bytes | None:
        """The handshake, at once; with a persona being put into the slot, when it is in (`StreamReady`)."""
        assert self.stream is not None
        return bytes([protocol.KIND_HANDSHAKE]) if self.stream.ready else None

    @property
    def awaits_start(self) -> bool:
        return not self.heard_audio

    def on_start_timeout(self, timeout_s: float) -> bytes:
        return f"start timeout: no audio within {timeout_s:g} s".encode()

    def on_text(self, data: str) -> None:
        pass  # moshi.server ignores these too

    def on_binary(self, data: bytes) -> None:
        if not data or data[0] != protocol.KIND_AUDIO:
            return  # as moshi.server does
        self.heard_audio = True
        assert self.stream is not None
        try:
            pcm = self.decoder.decode(data[1:])
        except BadAudio as exc:
            log.warning("/api/chat: %s", exc)
            return
        for samples in self.frames.push(pcm):
            self.metrics.frame_in()
            self.stream.push_audio(UserFrame.of(samples))

    async def encode_outgoing(self, kind: str, payload: tp.Any) -> bytes | None:
        if kind == "raw":
            return payload
        if kind == "audio":
            assert self.encoder is not None
            page = await self.encoder.encode(payload)
            return bytes([protocol.KIND_AUDIO]) + page if page else None
        return bytes([protocol.KIND_TEXT]) + payload.encode()

    def on_close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
        assert self.stream is not None
        dropped = self.stream.frames_dropped + self.outbox.dropped_audio
        self.stream.close()
        if dropped:
            self.metrics.frames_dropped(dropped)
        self.metrics.session_ended("duplex")
