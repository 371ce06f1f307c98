"""Wire protocol v1 (docs/protocol.md): constants, message builders and the client-message parser.

Everything that crosses the socket is named here once, so the server, the Python client and the
tests agree on spelling.
"""

from __future__ import annotations

import json
import typing as tp
from dataclasses import dataclass

PROTOCOL_VERSION = 1
SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # one model step: 80 ms at 24 kHz
FRAME_MS = 80

# Binary message kinds (first byte), as in Kyutai's moshi protocol.
KIND_HANDSHAKE = 0x00
KIND_AUDIO = 0x01
KIND_TEXT = 0x02

MODES = ("duplex", "cascade", "auto")
CODECS = ("opus", "pcm16")

ERROR_CODES = (
    "bad_message", "bad_audio", "not_started", "unsupported",
    "capacity", "unauthorized", "too_large", "internal",
)

CLIENT_TYPES = ("start", "stop", "reset", "interrupt", "text_input", "configure")

# config keys and the type each must have; numbers are range-checked in `validate_config`.
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "system_prompt": (str,),
    "voice": (str,),
    "temperature": (int, float),
    "text_temperature": (int, float),
    "top_k": (int,),
    "text_top_k": (int,),
    "seed": (int,),
    "transcribe_user": (bool,),
}
MAX_TOP_K = 500
MAX_TEMPERATURE = 5.0


class ProtocolError(Exception):
    """A client message we refuse; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ClientMessage:
    type: str
    body: dict[str, tp.Any]


def validate_config(config: tp.Any) -> dict[str, tp.Any]:
    """Checks a `config` object; returns a clean copy or raises ProtocolError(bad_message)."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ProtocolError("bad_message", "`config` must be a JSON object")
    clean: dict[str, tp.Any] = {}
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise ProtocolError("bad_message", f"unknown config key {key!r}; known: {sorted(CONFIG_KEYS)}")
        types = CONFIG_KEYS[key]
        # bool is an int in Python: refuse it where a number is wanted.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError("bad_message", f"config.{key} must be {names}, got {type(value).__name__}")
        if key in ("temperature", "text_temperature") and not 0 <= value <= MAX_TEMPERATURE:
            raise ProtocolError("bad_message", f"config.{key} must be in [0, {MAX_TEMPERATURE}]")
        if key in ("top_k", "text_top_k") and not 1 <= value <= MAX_TOP_K:
            raise ProtocolError("bad_message", f"config.{key} must be in [1, {MAX_TOP_K}]")
        if key == "seed" and not 0 <= value < 2**63:
            raise ProtocolError("bad_message", "config.seed must be in [0, 2^63)")
        clean[key] = value
    return clean


def parse_client_text(data: str) -> ClientMessage:
    """Parses one text frame from a client into a ClientMessage, or raises ProtocolError."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a text message must be a JSON object with a `type`")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "missing string field `type`")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("bad_message", f"unknown type {kind!r}; known: {', '.join(CLIENT_TYPES)}")
    body = {k: v for k, v in obj.items() if k != "type"}
    if kind in ("start", "configure"):
        if kind == "configure" and "config" not in body:
            raise ProtocolError("bad_message", "`configure` needs a `config` object")
        body["config"] = validate_config(body.get("config"))
    if kind == "start" and "mode" in body and body["mode"] not in MODES:
        raise ProtocolError("bad_message", f"mode must be one of {', '.join(MODES)}")
    if kind == "text_input" and not (isinstance(body.get("text"), str) and body["text"].strip()):
        raise ProtocolError("bad_message", "`text_input` needs a non-empty string `text`")
    return ClientMessage(kind, body)


def message(type_: str, session_id: str, **fields: tp.Any) -> str:
    """Serialises a server-to-client message."""
    return json.dumps({"type": type_, "session_id": session_id, **fields})


def error(session_id: str, code: str, text: str) -> str:
    assert code in ERROR_CODES, code
    return message("error", session_id, code=code, message=text)
