"""The session layer: one per connection, engine-agnostic.

It owns the protocol state machine (start/stop/reset/interrupt/configure/text_input), the
conversation clock, transcript segments, turn metrics, and the mapping from an engine's typed
frames to protocol messages. It never touches a socket: it reads decoded client messages and
writes to its Outbox; the connection lifecycle (connection.py) moves bytes.
"""

from __future__ import annotations

import logging
import time
import typing as tp
import uuid
from dataclasses import dataclass, field

from .. import protocol
from ..audio import FRAME_MS, SAMPLE_RATE, BadAudio, FrameAssembler, make_decoder
from ..engines.base import (AssistantAudio, AssistantText, AssistantTurnEnded, AssistantTurnStarted,
                            CapacityError, Engine, EngineFailure, EngineFrame, EngineStream, LLMProcessing,
                            TokenUsage, ToolCallReady, Unsupported, UserFrame, UserTranscript)
from ..engines.turns import ActivityDetector
from ..protocol import ProtocolError
from .outbox import Outbox
from .recording import NULL_RECORDER, ConversationRecorder, answers_input_before

log = logging.getLogger(__name__)

MAX_AUDIO_MESSAGE_BYTES = 256 * 1024   # ~ 5 s of pcm16; Opus pages are far smaller
MAX_TEXT_MESSAGE_BYTES = 64 * 1024
MAX_BAD_MESSAGES = 50                  # past this, the connection is closed (policy violation)
MAX_SEGMENT_CHARS = 600                # a longer assistant segment is finalised and a new one begun


class TooManyBadMessages(Exception):
    pass


@dataclass
class SessionLimits:
    max_audio_bytes: int = MAX_AUDIO_MESSAGE_BYTES
    max_text_bytes: int = MAX_TEXT_MESSAGE_BYTES
    max_bad_messages: int = MAX_BAD_MESSAGES


class SessionObserver(tp.Protocol):
    """Server-wide counters (metrics module); every call is cheap and non-blocking."""

    def session_started(self, mode: str) -> None: ...
    def session_ended(self, mode: str) -> None: ...
    def frame_in(self) -> None: ...
    def frame_out(self, turnaround_ms: float | None) -> None: ...
    def frames_dropped(self, n: int) -> None: ...
    def response_latency(self, mode: str, ms: float) -> None: ...
    def turn_stages(self, stages: dict[str, float]) -> None: ...
    def error(self, code: str) -> None: ...


@dataclass
class TurnState:
    """The assistant's current text segment and the bookkeeping for its metrics."""
    text: str = ""
    start_ms: int | None = None
    speaking: bool = False
    response_latency_ms: float | None = None


@dataclass
class Conversation:
    mode: str
    stream: EngineStream
    frames_in: int = 0
    frames_out: int = 0
    turn: TurnState = field(default_factory=TurnState)
    user_speech_end: float | None = None    # monotonic time of the user's last loud frame, after they stopped
    last_loud: float | None = None
    outbox_dropped_before: int = 0          # the outbox's drop count when this conversation began
    config: dict = field(default_factory=dict)   # as opened, updated by `configure` (a new recording segment reuses it)
    seed_drawn: bool = False                # the seed was drawn for the recording, not given by the client
    reset_at: float | None = None           # monotonic time of the last `reset`


class Session:
    def __init__(self, engines: dict[str, Engine], codec: str, observer: SessionObserver,
                 default_mode: str = "auto", limits: SessionLimits | None = None,
                 speech_threshold_dbfs: float = -45.0, recorder: ConversationRecorder = NULL_RECORDER):
        self.id = uuid.uuid4().hex[:12]
        self.recorder = recorder
        self.engines = engines
        self.codec = codec
        self.default_mode = default_mode
        self.auto_first = "duplex"   # the engine `auto` takes when it has a free slot (behind HAProxy: the one it counted)
        self.observer = observer
        self.limits = limits or SessionLimits()
        self.outbox = Outbox()
        self.decoder = make_decoder(codec)   # outgoing audio is encoded by the connection, at send time
        self.frames = FrameAssembler()
        self.user_voice = ActivityDetector(speech_threshold_dbfs, hangover_frames=5)
        self.conversation: Conversation | None = None
        self.bad_messages = 0
        self._told_not_started = False

    # --- outgoing ------------------------------------------------------------------------------
    def send(self, type_: str, **fields: tp.Any) -> None:
        self._put_text(protocol.message(type_, self.id, **fields))

    def send_error(self, code: str, text: str, param: str | None = None) -> None:
        self.observer.error(code)
        self._put_text(protocol.error(self.id, code, text, param))

    def _put_text(self, text: str) -> None:
        self.recorder.message_out(text)
        self.outbox.put_text(text)

    def send_ready(self) -> None:
        modes = [name for name in ("duplex", "cascade") if name in self.engines]
        self.send("ready", protocol=protocol.PROTOCOL_VERSION, modes=modes,
                  audio={"codec": self.codec, "sample_rate": SAMPLE_RATE, "frame_ms": FRAME_MS})

    def _bad(self, code: str, text: str, param: str | None = None) -> None:
        self.send_error(code, text, param)
        self.bad_messages += 1
        if self.bad_messages > self.limits.max_bad_messages:
            raise TooManyBadMessages(f"more than {self.limits.max_bad_messages} bad messages")

    # --- incoming ------------------------------------------------------------------------------
    def handle_text(self, data: str) -> None:
        if len(data.encode()) > self.limits.max_text_bytes:
            return self._bad("too_large", f"text messages are limited to {self.limits.max_text_bytes} bytes")
        try:
            msg = protocol.parse_client_text(data)
        except ProtocolError as exc:
            return self._bad(exc.code, exc.message, exc.param)
        handler = getattr(self, f"_on_{msg.type}")
        try:
            handler(msg.body)
        except Unsupported as exc:
            self.send_error(exc.code, str(exc), exc.key)

    def handle_binary(self, data: bytes) -> None:
        if not data or data[0] != protocol.KIND_AUDIO:
            kind = f"0x{data[0]:02x}" if data else "an empty message"
            return self._bad("bad_message", f"binary messages must start with 0x01 (audio); got {kind}")
        if len(data) > self.limits.max_audio_bytes:
            return self._bad("too_large", f"audio messages are limited to {self.limits.max_audio_bytes} bytes")
        if self.conversation is None:
            if not self._told_not_started:
                self._told_not_started = True
                self.send_error("not_started", "audio before `start` (or after `stop`) is discarded")
            return
        try:
            pcm = self.decoder.decode(data[1:])
        except BadAudio as exc:
            return self._bad("bad_audio", str(exc))
        for samples in self.frames.push(pcm):
            self._user_frame(UserFrame.of(samples))

    def _user_frame(self, frame: UserFrame) -> None:
        conv = self.conversation
        assert conv is not None
        conv.frames_in += 1
        self.observer.frame_in()
        stream = conv.stream
        if not stream.frame_locked:   # frame-locked: recorded when consumed (AssistantAudio.heard, `_receipt`)
            self.recorder.user_audio(frame.pcm)
        change = self.user_voice.update(frame.level_dbfs)
        now = time.monotonic()
        if self.user_voice.loud:
            conv.last_loud = now
        if change == "end":
            conv.user_speech_end = conv.last_loud
        elif change == "start":
            conv.user_speech_end = None
        dropped = stream.frames_dropped
        stream.push_audio(frame)
        if stream.frames_dropped > dropped:
            self.recorder.user_dropped(stream.frames_dropped - dropped)

    # --- control messages ----------------------------------------------------------------------
    def _on_start(self, body: dict) -> None:
        if self.conversation is not None:
            return self.send_error("bad_message", "already started; send `stop` first")
        mode = body.get("mode") or self.default_mode
        engine_name = self._pick_engine(mode)
        if engine_name is None:
            return
        given = body.get("config", {})
        config = self.recorder.prepare_config(given)   # recording: a seed is drawn (and kept) if none was given
        try:
            stream = self.engines[engine_name].open(config, self._on_engine_frame)
        except CapacityError as exc:
            return self.send_error("capacity", f"{exc}; try again later or use mode=cascade")
        self.conversation = Conversation(engine_name, stream, outbox_dropped_before=self.outbox.dropped_audio,
                                         config=config, seed_drawn="seed" in config and "seed" not in given)
        self.recorder.begin(self.id, engine_name, config, {"codec": self.codec, "seed_drawn_by_server":
                                                           self.conversation.seed_drawn})
        self.frames.clear()
        self.user_voice.reset()
        self._told_not_started = False
        self.observer.session_started(engine_name)
        log.info("session %s started (%s)", self.id, engine_name)
        self.send("status", status="listening", mode=engine_name)

    def _pick_engine(self, mode: str) -> str | None:
        if mode == "auto":
            for name in dict.fromkeys((self.auto_first, "duplex", "cascade")):
                engine = self.engines.get(name)
                if engine is not None and engine.has_free_slot():
                    return name
            self.send_error("capacity", "every slot of every engine is busy; try again later")
            return None
        if mode not in self.engines:
            self.send_error("unsupported", f"this server has no {mode} engine loaded (available: "
                            f"{', '.join(self.engines) or 'none'})")
            return None
        return mode

    def _on_stop(self, body: dict) -> None:
        conv = self.conversation
        if conv is not None:
            dropped = self._frames_dropped(conv)   # before the stream lets go of its slot (and its count)
            self._end_conversation()
            self.send("stop_acknowledged", queues_cleared=True)
            self._send_metrics(conv, None, dropped=dropped)
        else:
            self.send("stop_acknowledged", queues_cleared=True)
        self.send("status", status="stopped", mode=conv.mode if conv else None)
        self.recorder.end("stop")   # after the answers to `stop`, which belong to the recording

    def _end_conversation(self) -> None:
        """The one way a conversation ends (`stop` or the socket's close): slot freed, drops reported."""
        conv = self.conversation
        assert conv is not None
        dropped = self._frames_dropped(conv)
        if dropped:
            self.observer.frames_dropped(dropped)
        conv.stream.close()
        self.recorder.cut("stop", self.outbox.drop_audio())
        self.frames.clear()
        self.conversation = None
        self.observer.session_ended(conv.mode)
        log.info("session %s stopped (%d frames in, %d out)", self.id, conv.frames_in, conv.frames_out)

    def _require_conversation(self, what: str) -> Conversation | None:
        if self.conversation is None:
            self.send_error("not_started", f"`{what}` needs a conversation; send `start` first")
        return self.conversation

    def _on_reset(self, body: dict) -> None:
        conv = self._require_conversation("reset")
        if conv is None:
            return
        conv.stream.reset()
        conv.reset_at = time.monotonic()
        self._cut_queued_audio(conv, "reset")
        self.frames.clear()
        self.user_voice.reset()
        was_speaking = conv.turn.speaking
        conv.turn = TurnState()
        conv.user_speech_end = None
        self.send("reset_acknowledged")
        if was_speaking:
            self.send("tts_stop")
            self.send("status", status="listening", mode=conv.mode)
        conv.config = self.recorder.next_segment(conv.stream, self.id, conv.mode, conv.config,
                                                 {"codec": self.codec, "seed_drawn_by_server": conv.seed_drawn},
                                                 conv.seed_drawn)

    def _on_interrupt(self, body: dict) -> None:
        conv = self._require_conversation("interrupt")
        if conv is None:
            return
        self._cut_queued_audio(conv, "interrupt")
        self.send("interrupt_acknowledged")
        self.send("tts_stop")
        conv.stream.interrupt()  # may end the assistant's turn (final transcript, metrics)

    def _cut_queued_audio(self, conv: Conversation, what: str) -> None:
        """Unsent assistant audio goes: as silence where frames are locked to input frames (duplex)."""
        if conv.stream.frame_locked:
            self.recorder.cut(what, self.outbox.silence_audio())
        else:
            self.recorder.cut(what, self.outbox.drop_audio())

    def _on_configure(self, body: dict) -> None:
        conv = self._require_conversation("configure")
        if conv is not None:
            conv.stream.configure(body["config"])
            conv.config = {**conv.config, **body["config"]}
            conv.seed_drawn = conv.seed_drawn and "seed" not in body["config"]
            if body["config"].get("record") is False:
                self.recorder.discard()   # opted out mid-conversation: what was kept is deleted

    def _on_text_input(self, body: dict) -> None:
        conv = self._require_conversation("text_input")
        if conv is not None:
            conv.stream.text_input(body["text"])
            conv.user_speech_end = time.monotonic()  # a typed turn ends when it arrives

    def _on_tool_result(self, body: dict) -> None:
        conv = self._require_conversation("tool_result")
        if conv is not None:
            conv.stream.tool_result(body["call_id"], body["output"])

    # --- engine frames -------------------------------------------------------------------------
    def _on_engine_frame(self, frame: EngineFrame) -> None:
        conv = self.conversation
        if conv is None:
            return
        if isinstance(frame, AssistantAudio):
            self.outbox.put_audio(frame.pcm, self._assistant_audio(conv, frame))
        elif isinstance(frame, AssistantText):
            self._assistant_text(conv, frame.text)
        elif isinstance(frame, AssistantTurnStarted):
            self._turn_started(conv)
        elif isinstance(frame, AssistantTurnEnded):
            if frame.barge_in:
                self._cut_queued_audio(conv, "barge_in")
                self.send("tts_stop")
            self._turn_ended(conv, frame.interrupted, {**(frame.stages or {}), **(frame.playout or {})}, frame.usage)
        elif isinstance(frame, UserTranscript):
            kind = "final_transcript" if frame.end_ms is not None else "partial_transcript"
            extra = {"end_ms": frame.end_ms} if frame.end_ms is not None else {}
            self.send(kind, role="user", content=frame.content, start_ms=frame.start_ms, **extra)
        elif isinstance(frame, LLMProcessing):
            self.send("llm_status", status="processing")
        elif isinstance(frame, EngineFailure):
            self.send_error(frame.code, frame.message)
        elif isinstance(frame, ToolCallReady):
            self.send("tool_call", call_id=frame.call.call_id, name=frame.call.name, arguments=frame.call.arguments)

    def _assistant_audio(self, conv: Conversation, frame: AssistantAudio) -> tp.Any:
        """An assistant frame counted (clock, metrics); returns its recording receipt. Every frame the engine
        gives goes through here, sent or not, so that the recording's frame count stays aligned."""
        conv.frames_out += 1
        self.observer.frame_out(frame.turnaround_ms)
        return self._receipt(conv, frame)

    def _receipt(self, conv: Conversation, frame: AssistantAudio) -> tp.Any:
        """Where the recording puts this frame (None: nowhere; see `answers_input_before`)."""
        locked = conv.stream.frame_locked
        if locked and answers_input_before(frame, conv.reset_at):
            return None
        if locked and frame.heard is not None:   # the user frame this one answers, as the model consumed it
            self.recorder.user_audio(frame.heard, (frame.turnaround_ms or 0.0) / 1000)
        return self.recorder.assistant_audio(len(frame.pcm), locked)

    def _clock_ms(self, conv: Conversation) -> int:
        return conv.frames_out * FRAME_MS

    def _assistant_text(self, conv: Conversation, text: str) -> None:
        turn = conv.turn
        if turn.start_ms is None:
            turn.start_ms = self._clock_ms(conv)
        turn.text += text
        self.send("llm_response", content=text, is_complete=False)
        self.send("partial_transcript", role="assistant", content=turn.text.strip(), start_ms=turn.start_ms)
        if len(turn.text) > MAX_SEGMENT_CHARS:
            # A monologue (or random-weight babble) would make every partial ever longer: cut it.
            self._final_assistant_segment(conv)

    def _final_assistant_segment(self, conv: Conversation) -> None:
        turn = conv.turn
        if turn.text.strip():
            self.send("final_transcript", role="assistant", content=turn.text.strip(),
                      start_ms=turn.start_ms, end_ms=self._clock_ms(conv))
        turn.text = ""
        turn.start_ms = self._clock_ms(conv) if turn.speaking else None

    def _turn_started(self, conv: Conversation) -> None:
        turn = conv.turn
        turn.speaking = True
        if turn.start_ms is None:
            turn.start_ms = self._clock_ms(conv)
        if conv.user_speech_end is not None and not self.user_voice.active:
            turn.response_latency_ms = (time.monotonic() - conv.user_speech_end) * 1000.0
            self.observer.response_latency(conv.mode, turn.response_latency_ms)
            conv.user_speech_end = None
        self.send("status", status="speaking", mode=conv.mode)
        self.send("tts_start", format=self.codec, sample_rate=SAMPLE_RATE)

    def _turn_ended(self, conv: Conversation, interrupted: bool, stages: dict, usage: TokenUsage | None = None) -> None:
        turn = conv.turn
        if not interrupted:
            self.send("tts_end")
        if turn.text.strip():
            self.send("llm_response", content="", is_complete=True)
        self._final_assistant_segment(conv)
        if stages:
            self.observer.turn_stages(stages)
        tokens = {} if usage is None else {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
        self._send_metrics(conv, turn.response_latency_ms, {**stages, **tokens})
        conv.turn = TurnState()
        self.send("status", status="listening", mode=conv.mode)

    def _frames_dropped(self, conv: Conversation) -> int:
        """This conversation's drops: its engine queue's, and the outbox's since it began (the outbox's
        count runs on over every conversation of the socket)."""
        return conv.stream.frames_dropped + self.outbox.dropped_audio - conv.outbox_dropped_before

    def _send_metrics(self, conv: Conversation, response_latency_ms: float | None, extra: dict | None = None,
                      dropped: int | None = None) -> None:
        """`extra`: a cascade turn's stage times and its LLM token counts."""
        if dropped is None:
            dropped = self._frames_dropped(conv)
        self.send("metrics", response_latency_ms=None if response_latency_ms is None else round(response_latency_ms, 1),
                  frames_in=conv.frames_in, frames_out=conv.frames_out, frames_dropped=dropped, **(extra or {}))

    # --- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """The socket is gone: free the slot at once."""
        if self.conversation is not None:
            self._end_conversation()
        self.recorder.end("disconnect")
