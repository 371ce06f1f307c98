"""Wire protocol v1 (docs/protocol.md): names, message builders and the client-message parser.

Everything that crosses the socket is named here once, so the server, the Python client and the
tests agree on spelling. Wire things only: the audio clock is `duplex.audio`'s, the conversation
config's schema is `duplex.config`'s.
"""

from __future__ import annotations

import json
import typing as tp
from dataclasses import dataclass

from .config import ConfigError, validate_config

PROTOCOL_VERSION = 1

# Binary message kinds (first byte), as in Kyutai's moshi protocol.
KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02
# The rest of Kyutai's kinds, spoken on /api/chat only (docs/moshi-compat.md: who sends what, what we do).
KIND_CONTROL = 0x03       # + one action byte (MOSHI_CONTROL_ACTIONS)
KIND_METADATA = 0x04      # + UTF-8 JSON
KIND_ERROR = 0x05         # + UTF-8 text; ours is "<code>: <message>", code from ERROR_CODES
KIND_PING = 0x06
KIND_COLORED_TEXT = 0x07  # + colour byte + UTF-8 text (server to client)
KIND_IMAGE = 0x08         # Kyutai's Rust server (vision models)
KIND_CODES = 0x09         # Kyutai's Rust server (raw audio codes)
MOSHI_CONTROL_ACTIONS = {0x00: "start", 0x01: "endTurn", 0x02: "pause", 0x03: "restart"}

MODES = ("duplex", "cascade", "auto")
CODECS = ("opus", "pcm16")

ERROR_CODES = (
    "bad_message", "bad_audio", "not_started", "unsupported",
    "capacity", "unauthorized", "too_large", "internal",
    "timeout",   # beyond PROTOCOL.md's list (docs/protocol.md): what a turn waited for (a tool result) never came
)

# The cascade's stages of a turn, in the order they happen, each a `<stage>_ms` field of the turn's `metrics`
# message timed from the moment the end of the user's turn was decided (also the `duplex_cascade_stage_ms`
# histogram and `duplex bench`'s stages): the final transcript, the LLM's first token, the first whole words
# handed to the TTS, the TTS's first frame back on the event loop, and that frame sent (queued to the socket).
CASCADE_STAGES = ("stt_final", "llm_first_token", "tts_first_words", "tts_first_frame", "tts_first_audio")

CLIENT_TYPES = ("start", "stop", "reset", "interrupt", "text_input", "configure", "tool_result")


class ProtocolError(Exception):
    """A client message we refuse; `code` is one of ERROR_CODES, `param` the config key at fault (if one is)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ClientMessage:
    type: str
    body: dict[str, tp.Any]


def json_object(data: str, what: str) -> dict:
    """A text frame as a JSON object (`what` names it in the error), or ProtocolError `bad_message`."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"{what} must be a JSON object with a `type`")
    return obj


def parse_client_text(data: str) -> ClientMessage:
    """Parses one text frame from a client into a ClientMessage, or raises ProtocolError."""
    obj = json_object(data, "a text message")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "missing string field `type`")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("bad_message", f"unknown type {kind!r}; known: {', '.join(CLIENT_TYPES)}")
    body = {k: v for k, v in obj.items() if k != "type"}
    if kind in ("start", "configure"):
        if kind == "configure" and "config" not in body:
            raise ProtocolError("bad_message", "`configure` needs a `config` object")
        try:
            body["config"] = validate_config(body.get("config"))
        except ConfigError as exc:
            raise ProtocolError("bad_message", str(exc), exc.key) from None
    if kind == "start" and "mode" in body and body["mode"] not in MODES:
        raise ProtocolError("bad_message", f"mode must be one of {', '.join(MODES)}")
    if kind == "text_input" and not (isinstance(body.get("text"), str) and body["text"].strip()):
        raise ProtocolError("bad_message", "`text_input` needs a non-empty string `text`")
    if kind == "tool_result" and not (isinstance(body.get("call_id"), str) and isinstance(body.get("output"), str)):
        raise ProtocolError("bad_message", "`tool_result` needs a string `call_id` and a string `output`")
    return ClientMessage(kind, body)


def message(type_: str, session_id: str, **fields: tp.Any) -> str:
    """Serialises a server-to-client message."""
    return json.dumps({"type": type_, "session_id": session_id, **fields})


def error(session_id: str, code: str, text: str, param: str | None = None) -> str:
    """An `error`; `param`: the config key refused (`voice`, `temperature`), where one is (docs/protocol.md)."""
    assert code in ERROR_CODES, code
    extra = {"param": param} if param is not None else {}
    return message("error", session_id, code=code, message=text, **extra)
