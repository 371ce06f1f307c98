"""`/api/chat`: Kyutai's moshi byte protocol on top of the duplex engine.

Binary only, the first byte is the kind: the server sends 0x00 once the conversation is ready; 0x01 + Ogg
Opus pages go both ways; the server sends 0x02 + UTF-8 pieces of the model's text stream. Kyutai's web
client and `python -m moshi.client` work unchanged, and many at once (each takes a batch slot, where
moshi.server serves one conversation at a time behind a global lock). The other kinds of Kyutai's
protocol (0x03 control, 0x04 metadata, 0x05 error, 0x06 ping, ...) are handled as docs/moshi-compat.md
tabulates: a ping is answered with a ping, control `restart` resets the conversation, and what we refuse
gets a 0x05 error `<code>: <message>` (codes as on /ws; Kyutai's clients ignore it, other tools can show
it), also sent before a policy close. `MoshiCodec` is this protocol's side of the connection lifecycle
(`connection.py`); there is no Session here. The conversation (and its batch slot) begins at the upgrade,
so the start timeout runs until the first audio message: a client that holds a slot and sends no audio
is closed 1008.
"""

from __future__ import annotations

import logging
import time
import typing as tp
import uuid

from aiohttp import web

from ... import protocol
from ...audio import BadAudio, FrameAssembler, OpusDecoder
from ...config import CONFIG_SCHEMA
from ...engines.base import (AssistantAudio, AssistantText, CapacityError, EngineFailure, EngineFrame, EngineStream,
                            StreamReady, Unsupported, UserFrame)
from ..connection import CloseConnection, Refusal, SocketCodec, serve_socket
from ..recording import answers_input_before
from ..metrics import ServerMetrics
from ..opus_pool import AudioEncoder, audio_encoder
from ..outbox import Outbox
from ..session import MAX_AUDIO_MESSAGE_BYTES, MAX_BAD_MESSAGES
from ..state import ENGINES, METRICS, OPUS_POOL

log = logging.getLogger(__name__)

# moshi's web client query names -> our config keys (unknown names, e.g. pad_mult, are ignored).
QUERY_FLOATS = {"audio_temperature": "temperature", "text_temperature": "text_temperature"}
QUERY_INTS = {"audio_topk": "top_k", "text_topk": "text_top_k", "audio_seed": "seed", "text_seed": "seed"}
# PersonaPlex's server: the persona (role text, a voice file name such as NATF2.pt) and its seed (-1: none).
QUERY_PERSONA = {"text_prompt": "system_prompt", "voice_prompt": "voice"}


FRAME = "frame"   # an outbox item that is a whole binary message already (error, ping, a persona's late handshake)


def moshi_error(code: str, text: str) -> bytes:
    """A 0x05 error message: `<code>: <text>` in UTF-8, the code one of protocol.ERROR_CODES."""
    assert code in protocol.ERROR_CODES, code
    return bytes([protocol.KIND_ERROR]) + f"{code}: {text}".encode()


def config_from_query(query) -> dict:
    """The config from moshi's query parameters, each brought into the schema's range; ValueError for what
    is not a finite number (text, NaN, infinity)."""
    config: dict = {}
    for name, key in (*QUERY_FLOATS.items(), *QUERY_INTS.items()):
        if name in query and key not in config:
            config[key] = _fit(name, query[name], key)
    for name, key in QUERY_PERSONA.items():
        if query.get(name, "").strip():
            config[key] = query[name]
    if "seed" in query and float(query["seed"]) != -1:
        config["seed"] = _fit("seed", query["seed"], "seed")
    return config


def _fit(name: str, text: str, key: str) -> float:
    """One query parameter as config `key`, brought into its range; ValueError naming the parameter."""
    try:
        return CONFIG_SCHEMA[key].fit(float(text))
    except ValueError as exc:
        raise ValueError(f"{name}={text[:40]!r}: {exc}") from None


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await serve_socket(request, MoshiCodec())


class MoshiCodec(SocketCodec):
    """Moshi's byte protocol over one duplex stream; no Session (this protocol has no conversation states)."""

    endpoint = "api_chat"
    slow_reader_reason = b"client too slow"
    metrics: ServerMetrics

    def __init__(self, max_audio_bytes: int = MAX_AUDIO_MESSAGE_BYTES,
                 max_bad_messages: int = MAX_BAD_MESSAGES) -> None:
        self.outbox = Outbox()
        self.decoder = OpusDecoder()
        self.frames = FrameAssembler()
        self.stream: EngineStream | None = None
        self.encoder: AudioEncoder | None = None
        self.heard_audio = False   # a first 0x01 message came: the start timeout is over
        self.max_audio_bytes = max_audio_bytes
        self.max_bad_messages = max_bad_messages
        self.bad_messages = 0      # refused messages (all but `unsupported` ones); past the limit: close 1008
        self._recording: tuple[str, dict, dict] | None = None   # the recording's id, config, endpoint info
        self._seed_drawn = False   # the seed was drawn for the recording, not given in the query
        self._reset_at: float | None = None   # monotonic time of the last `restart`
        self._handshake_sent = False          # 0x00 opens the stream once, a `restart` or not

    def on_open(self, request: web.Request) -> Refusal | None:
        engine = request.app[ENGINES].get("duplex")
        self.metrics = request.app[METRICS]
        if engine is None:
            return self._refusal(1011, "unsupported", "no duplex model loaded: this server serves the cascade "
                                 "only (use /ws)", label="no_model")
        try:
            config = config_from_query(request.query)
        except ValueError as exc:
            return self._refusal(1008, "bad_message", f"bad query parameter: {exc}", label="bad_query")
        keep = request.query.get("record", "1").lower() not in ("0", "false", "no")
        given = config if keep else {**config, "record": False}
        config = self.recorder.prepare_config(given)   # recording: a seed is drawn (and kept) if none was given
        self._seed_drawn = "seed" in config and "seed" not in given
        try:
            self.stream = engine.open(config, self._sink)
        except CapacityError:
            return self._refusal(1013, "capacity", "server full: every duplex slot is busy, try again later",
                                 label="no_slot")
        except Unsupported as exc:   # e.g. a persona asked of a model without one, an unknown voice
            return self._refusal(1008, exc.code, str(exc), label="unsupported")
        query = {k: v for k, v in request.query.items() if k != "token"}   # the token is never kept
        self._recording = (uuid.uuid4().hex[:12], config, {"codec": "opus", "query": query})
        self.recorder.begin(self._recording[0], "duplex", config, self._recording[2])
        # Only now: a refused socket never reaches on_close, and a pool encoder holds a worker's stream.
        self.encoder = audio_encoder(request.app.get(OPUS_POOL), "opus")
        self.metrics.session_started("duplex")
        log.info("moshi-compatible conversation started (%s)", config or "default sampling")
        return None

    def _refusal(self, close_code: int, code: str, text: str, label: str) -> Refusal:
        """Close with `text` as the reason, after a 0x05 error that says the same with its code."""
        self.metrics.error(code)
        reason = text.encode()[:120].decode(errors="ignore").encode()   # a close reason is short, whole UTF-8
        return Refusal(close_code, reason, moshi_error(code, text), label=label)

    def full(self, request: web.Request, reason: str) -> Refusal:
        self.metrics = request.app[METRICS]
        return self._refusal(1013, "capacity", reason, label="max_connections")

    def _sink(self, frame: EngineFrame) -> None:
        if isinstance(frame, AssistantAudio):
            self.metrics.frame_out(frame.turnaround_ms)
            receipt = None
            if not answers_input_before(frame, self._reset_at):
                if frame.heard is not None:   # the user's track as the model consumed it
                    self.recorder.user_audio(frame.heard, (frame.turnaround_ms or 0.0) / 1000)
                receipt = self.recorder.assistant_audio(len(frame.pcm), frame_locked=True)
            self.outbox.put_audio(frame.pcm, receipt)
        elif isinstance(frame, AssistantText):
            self.recorder.message_out(frame.text, verbatim=True)   # a piece of text, not a JSON message
            self.outbox.put_text(frame.text)  # sent as 0x02 + utf-8
        elif isinstance(frame, StreamReady) and not self._handshake_sent:   # a `restart`'s persona: no second one
            self._handshake_sent = True
            self.outbox.put_message(FRAME, bytes([protocol.KIND_HANDSHAKE]))   # the persona is in: now the handshake
        elif isinstance(frame, EngineFailure):
            log.warning("/api/chat: %s: %s", frame.code, frame.message)
            self._error(frame.code, frame.message)

    def greeting(self) -> bytes | None:
        """The handshake, at once; with a persona being put into the slot, when it is in (`StreamReady`)."""
        assert self.stream is not None
        self._handshake_sent = self.stream.ready
        return bytes([protocol.KIND_HANDSHAKE]) if self.stream.ready else None

    @property
    def awaits_start(self) -> bool:
        return not self.heard_audio

    def on_start_timeout(self, timeout_s: float) -> bytes:
        text = f"start timeout: no audio within {timeout_s:g} s"
        self._error("not_started", f"{text}; the socket is closed")
        return text.encode()

    def on_error(self) -> None:
        self._error("internal", "internal server error; the connection is closed")

    # --- incoming --------------------------------------------------------------------------------
    def on_text(self, data: str) -> None:
        self._bad("bad_message", "/api/chat takes binary messages only (a kind byte, then its payload); "
                                 "text frame dropped")

    def on_binary(self, data: bytes) -> None:
        if not data:
            return self._bad("bad_message", "empty message: a message starts with its kind byte")
        kind, payload = data[0], data[1:]
        if kind == protocol.KIND_AUDIO:
            self._on_audio(data)
        elif kind == protocol.KIND_PING:
            self.outbox.put_message(FRAME, bytes([protocol.KIND_PING]))
        elif kind == protocol.KIND_CONTROL:
            self._on_control(payload)
        elif kind in (protocol.KIND_HANDSHAKE, protocol.KIND_METADATA):
            pass   # the client's hello or its description of itself: nothing to act on, as in Kyutai's servers
        elif kind == protocol.KIND_ERROR:
            log.info("/api/chat: the client reports an error: %s", payload[:200].decode(errors="replace"))
        elif kind in (protocol.KIND_TEXT, protocol.KIND_IMAGE, protocol.KIND_CODES):
            name = {protocol.KIND_TEXT: "text", protocol.KIND_IMAGE: "image", protocol.KIND_CODES: "codes"}[kind]
            self._error("unsupported", f"{name} input (0x{kind:02x}) is not taken by this duplex model; "
                                       "message dropped (send audio, 0x01)")
        else:
            self._bad("bad_message", f"unknown message kind 0x{kind:02x} (a client sends 0x01 audio; see "
                                     "docs/moshi-compat.md); message dropped")

    def _on_audio(self, data: bytes) -> None:
        if len(data) > self.max_audio_bytes:
            return self._bad("too_large", f"audio messages are limited to {self.max_audio_bytes} bytes")
        self.heard_audio = True
        assert self.stream is not None
        try:
            pcm = self.decoder.decode(data[1:])
        except BadAudio as exc:
            return self._bad("bad_audio", str(exc))
        for samples in self.frames.push(pcm):
            self.metrics.frame_in()
            dropped = self.stream.frames_dropped
            self.stream.push_audio(UserFrame.of(samples))   # recorded when consumed (AssistantAudio.heard)
            if self.stream.frames_dropped > dropped:
                self.recorder.user_dropped(self.stream.frames_dropped - dropped)

    def _on_control(self, payload: bytes) -> None:
        action = protocol.MOSHI_CONTROL_ACTIONS.get(payload[0]) if len(payload) == 1 else None
        if action is None:
            return self._bad("bad_message", "a control message is 0x03 + one action byte (0 start, 1 endTurn, "
                                            f"2 pause, 3 restart); got payload {payload[:8].hex() or 'none'}")
        assert self.stream is not None
        if action == "restart":   # as /ws `reset`: model state wiped, unconsumed input and queued audio cut
            self.stream.reset()
            self._reset_at = time.monotonic()
            self.recorder.cut("reset", self.outbox.silence_audio())
            self.frames.clear()
            self._new_segment()
        elif action != "start":   # start: the conversation began at the upgrade
            self._error("unsupported", f"control {action}: a duplex model takes turns from the audio itself; "
                                       "ignored")

    def _new_segment(self) -> None:
        """A `restart` is a new recording segment, as `reset` is on /ws."""
        if self._recording is None or self.stream is None:
            return
        session_id, config, info = self._recording
        config = self.recorder.next_segment(self.stream, session_id, "duplex", config, info, self._seed_drawn)
        self._recording = (session_id, config, info)

    def _error(self, code: str, text: str) -> None:
        self.metrics.error(code)
        self.outbox.put_message(FRAME, moshi_error(code, text))

    def _bad(self, code: str, text: str) -> None:
        self._error(code, text)
        self.bad_messages += 1
        if self.bad_messages > self.max_bad_messages:
            raise CloseConnection(1008, f"more than {self.max_bad_messages} bad messages".encode())

    # --- outgoing --------------------------------------------------------------------------------
    async def encode_outgoing(self, kind: str, payload: tp.Any) -> bytes | None:
        if kind == "audio":
            assert self.encoder is not None
            page = await self.encoder.encode(payload)
            return bytes([protocol.KIND_AUDIO]) + page if page else None
        if kind == FRAME:
            return payload
        return bytes([protocol.KIND_TEXT]) + payload.encode()

    def on_close(self) -> None:
        if self.encoder is not None:
            self.encoder.close()
        assert self.stream is not None   # on_close follows an on_open that opened the stream
        dropped = self.stream.frames_dropped + self.outbox.dropped_audio
        self.stream.close()
        if dropped:
            self.metrics.frames_dropped(dropped)
        self.metrics.session_ended("duplex")
        self.recorder.end("disconnect")
