"""The OpenAI Realtime API's wire things (GA event names), for `/v1/realtime` (docs/realtime.md).

Wire things only: ids, the server events' JSON, the client events' parser, the `error` event, and the
session object with the `session.update` fields this server honours. What the events mean for a
conversation is `session.py`'s; the socket is `codec.py`'s.

Shapes follow the `openai` package's `openai/types/realtime/*` models: a server event is
`{"type", "event_id", ...}`; an error is `{"type": "error", "event_id", "error": {"type", "code",
"message", "param", "event_id"}}`, its `event_id` the offending client event's.
"""

from __future__ import annotations

import json
import typing as tp
import uuid
from dataclasses import dataclass, field

from .... import protocol
from ....audio import SAMPLE_RATE

PCM_FORMAT = {"type": "audio/pcm", "rate": SAMPLE_RATE}   # the one audio format, both ways
SERVER_VAD = {"type": "server_vad", "create_response": True, "interrupt_response": True}

CLIENT_EVENTS = (
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "conversation.item.create", "conversation.item.truncate", "conversation.item.delete", "conversation.item.retrieve",
    "response.create", "response.cancel", "output_audio_buffer.clear",
)
# GA client events this server knows and answers with `error` `unsupported` (docs/realtime.md says why).
# the error codes of OpenAI's reference this server sends besides the /ws protocol's (protocol.ERROR_CODES),
# where a client keys on them (pipecat ignores the first two instead of ending its session)
ERROR_CODES = ("response_cancel_not_active", "conversation_already_has_active_response",
               "input_audio_buffer_commit_empty", "item_delete_invalid_item_id", "item_retrieve_invalid_item_id",
               "item_truncate_invalid_item_id", "unknown_type")
# OpenAI's own voice names, which frameworks send by default (LiveKit: marin; pipecat: alloy): taken as the
# server's default voice (session.updated shows what is used); any other unknown voice is an `error`
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "marin", "sage", "shimmer", "verse")
UNSUPPORTED_EVENTS: tuple[str, ...] = ()   # none now (output_audio_buffer.clear: the session answers it per transport)


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: `event_…`, `item_…`, `resp_…`, `sess_…`."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def event(type_: str, **fields: tp.Any) -> str:
    """A server event as the JSON text to send."""
    return json.dumps({"type": type_, "event_id": new_id("event"), **fields})


def error_event(code: str, message: str, event_id: str | None, param: str | None = None) -> str:
    """The `error` event: `type` is `server_error` for the server's own failures, else `invalid_request_error`."""
    kind = "server_error" if code == "internal" else "invalid_request_error"
    return event("error", error={"type": kind, "code": code, "message": message, "param": param,
                                 "event_id": event_id})


class RealtimeProtocolError(Exception):
    """A client event refused before it reaches the session; `code` as in docs/realtime.md."""

    def __init__(self, code: str, message: str, event_id: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.event_id, self.param = code, message, event_id, param


@dataclass(frozen=True)
class ClientEvent:
    type: str
    event_id: str | None
    body: dict[str, tp.Any]


def parse_client_event(data: str) -> ClientEvent:
    """One text frame as a ClientEvent, or RealtimeProtocolError (bad_message, unknown_type, unsupported)."""
    try:
        obj = protocol.json_object(data, "a client event")
    except protocol.ProtocolError as exc:
        raise RealtimeProtocolError(exc.code, exc.message) from None
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RealtimeProtocolError("bad_message", "missing string field `type`", event_id, "type")
    if kind in UNSUPPORTED_EVENTS:
        raise RealtimeProtocolError("unsupported", f"{kind} is not supported by this server (see docs/realtime.md)",
                                    event_id, "type")
    if kind not in CLIENT_EVENTS:
        raise RealtimeProtocolError("unknown_type", f"unknown event type {kind!r}; known: {', '.join(CLIENT_EVENTS)}",
                                    event_id, "type")
    return ClientEvent(kind, event_id, {k: v for k, v in obj.items() if k not in ("type", "event_id")})


# --- conversation items and responses ------------------------------------------------------------------
def user_audio_item(item_id: str, transcript: str | None = None) -> dict:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_audio", "transcript": transcript}]}


def text_item(item_id: str, role: str, text: str) -> dict:
    """A message added as text: `input_text` for the user and system, `output_text` for the assistant."""
    kind = "output_text" if role == "assistant" else "input_text"
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": "completed",
            "content": [{"type": kind, "text": text}]}


def assistant_item(item_id: str, status: str, transcript: str | None) -> dict:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": status,
            "content": content}


def response_object(response_id: str, status: str, output: list[dict], voice: str | None,
                    reason: str | None = None, metadata: dict | None = None, usage: dict | None = None) -> dict:
    """`metadata` is the `response.create`'s, echoed (LiveKit finds its response by it)."""
    details = None if status == "in_progress" else {"type": status, "reason": reason, "error": None}
    return {"id": response_id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output, "conversation_id": None, "output_modalities": ["audio"],
            "audio": {"output": {"format": PCM_FORMAT, "voice": voice}}, "max_output_tokens": "inf",
            "metadata": metadata, "usage": usage}


def usage_object(input_tokens: int = 0, output_tokens: int = 0) -> dict:
    """`response.done`'s `usage`: text tokens as counted where known, 0 where not; no audio tokens here."""
    return {"total_tokens": input_tokens + output_tokens, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "input_token_details": {"text_tokens": input_tokens, "audio_tokens": 0, "image_tokens": 0,
                                    "cached_tokens": 0,
                                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
            "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0}}


# --- the session object and `session.update` -------------------------------------------------------
@dataclass
class RealtimeConfig:
    """What a client sees of its session; `model` is the engine in use."""
    model: str
    instructions: str = ""
    voice: str | None = None
    turn_detection: dict | None = field(default_factory=lambda: dict(SERVER_VAD))
    transcription: dict | None = None
    tools: list[dict] = field(default_factory=list)   # as the client gave them (Realtime's flat shape)
    tool_choice: tp.Any = "auto"

    def wire(self, session_id: str) -> dict:
        return {"type": "realtime", "object": "realtime.session", "id": session_id, "model": self.model,
                "output_modalities": ["audio"], "instructions": self.instructions,
                "audio": {"input": {"format": PCM_FORMAT, "transcription": self.transcription,
                                    "noise_reduction": None, "turn_detection": self.turn_detection},
                          "output": {"format": PCM_FORMAT, "voice": self.voice, "speed": 1.0}},
                "tools": self.tools, "tool_choice": self.tool_choice, "max_output_tokens": "inf", "tracing": None,
                "truncation": "auto", "prompt": None, "include": None}


@dataclass
class SessionUpdate:
    """The fields of a `session.update` this server can apply, and what it refuses (param, code, message)."""
    changes: dict[str, tp.Any] = field(default_factory=dict)   # model, instructions, voice, turn_detection,
                                                               # transcription, tools, tool_choice (functions.py reads these)
    refused: list[tuple[str, str, str]] = field(default_factory=list)

    def refuse(self, param: str, code: str, message: str) -> None:
        self.refused.append((param, code, message))


# Fields that only have their default value here: anything else is refused with `unsupported`.
_DEFAULT_ONLY: dict[str, tuple[tp.Any, ...]] = {
    "type": ("realtime",), "output_modalities": (["audio"],),
    "max_output_tokens": ("inf",), "tracing": (), "prompt": (), "include": ([],), "reasoning": (),
    "truncation": ("auto",), "parallel_tool_calls": (True, False),
}
_READ_ONLY = ("object", "id", "expires_at")
NOISE_REDUCTION = ("near_field", "far_field")


def parse_session_update(session: tp.Any, modes: tp.Iterable[str]) -> SessionUpdate:
    """Reads a `session.update`'s `session` object field by field (GA shape)."""
    update = SessionUpdate()
    if not isinstance(session, dict):
        update.refuse("session", "bad_message", "`session.update` needs a `session` object")
        return update
    for name, value in session.items():
        if name == "model":
            if not isinstance(value, str):
                update.refuse("session.model", "bad_message", f"model must be one of {', '.join(modes)}")
            else:   # another name (an OpenAI model's, e.g. `gpt-realtime`): the server's default engine, kept
                update.changes["model"] = value if value in modes else "auto"
        elif name == "instructions":
            if not isinstance(value, str):
                update.refuse("session.instructions", "bad_message", "instructions must be a string")
            else:
                update.changes["instructions"] = value
        elif name in ("tools", "tool_choice"):
            if value is not None:
                update.changes[name] = value
        elif name == "audio":
            _audio(value, update)
        elif name in _READ_ONLY:
            pass   # echoed from session.created by some clients; the server's own values stand
        elif name in _DEFAULT_ONLY:
            if value is not None and value not in _DEFAULT_ONLY[name]:
                update.refuse(f"session.{name}", "unsupported", f"session.{name} = {json.dumps(value)[:80]} is not "
                              "supported by this server (see docs/realtime.md)")
        else:
            update.refuse(f"session.{name}", "bad_message", f"unknown parameter session.{name}")
    return update


def _audio(audio: tp.Any, update: SessionUpdate) -> None:
    if not isinstance(audio, dict):
        return update.refuse("session.audio", "bad_message", "session.audio must be an object")
    for direction in ("input", "output"):
        part = audio.get(direction) or {}
        if not isinstance(part, dict):
            update.refuse(f"session.audio.{direction}", "bad_message", f"session.audio.{direction} must be an object")
            continue
        fmt = part.get("format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "audio/pcm"
                                    and fmt.get("rate", SAMPLE_RATE) in (SAMPLE_RATE, None)):
            update.refuse(f"session.audio.{direction}.format", "bad_audio",
                          f"this server speaks audio/pcm at {SAMPLE_RATE} Hz only (pcm16, mono, little-endian)")
    _audio_input(audio.get("input") or {}, update)
    output = audio.get("output") or {}
    if isinstance(output, dict):
        voice = output.get("voice")
        if isinstance(voice, dict):
            voice = voice.get("id")
        if voice is not None:
            update.changes["voice"] = str(voice)
        if output.get("speed") not in (None, 1, 1.0):
            update.refuse("session.audio.output.speed", "unsupported", "speech speed cannot be changed here")


def _audio_input(part: tp.Any, update: SessionUpdate) -> None:
    if not isinstance(part, dict):
        return
    reduction = part.get("noise_reduction")   # near_field / far_field: taken, ignored (shown as null)
    if reduction is not None and not (isinstance(reduction, dict) and reduction.get("type") in NOISE_REDUCTION):
        update.refuse("session.audio.input.noise_reduction", "bad_message",
                      f"noise_reduction must be null or of type {' / '.join(NOISE_REDUCTION)}")
    if "transcription" in part:
        transcription = part["transcription"]
        if transcription is not None and not isinstance(transcription, dict):
            update.refuse("session.audio.input.transcription", "bad_message", "transcription must be an object or null")
        else:
            # `language` and `prompt` are hints: the server's own recogniser takes none, and transcribes anyway
            update.changes["transcription"] = ({"model": str(transcription.get("model") or "duplex-stt")}
                                               if transcription is not None else None)
    if "turn_detection" in part:
        _turn_detection(part["turn_detection"], update)


def _turn_detection(detection: tp.Any, update: SessionUpdate) -> None:
    param = "session.audio.input.turn_detection"
    if detection is None:
        update.changes["turn_detection"] = None
        return
    if not isinstance(detection, dict) or detection.get("type") not in ("server_vad", "semantic_vad"):
        return update.refuse(param, "bad_message", "turn_detection must be null or of type server_vad / semantic_vad")
    # The detector's tuning (threshold, prefix_padding_ms, silence_duration_ms, eagerness) is taken and
    # ignored: the server's end-of-turn detector is set for the whole server (`--speech-threshold-dbfs`,
    # `--end-of-turn-silence-ms`), and session.updated shows the detector without them. An idle timeout
    # would promise events this server does not send: refused.
    if detection.get("idle_timeout_ms") is not None:
        update.refuse(f"{param}.idle_timeout_ms", "unsupported", "there is no idle timeout here "
                      "(input_audio_buffer.timeout_triggered is not sent)")
    if detection.get("interrupt_response") is False:
        update.refuse(f"{param}.interrupt_response", "unsupported", "the user's speech always cuts the assistant")
    update.changes["turn_detection"] = {"type": detection["type"],
                                        "create_response": detection.get("create_response") is not False,
                                        "interrupt_response": True}
