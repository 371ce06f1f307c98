"""Hypothesis strategies for the protocol fuzzer (tests/test_fuzz_protocols.py): client messages for
/ws, /api/chat and /v1/realtime, valid and broken.

Each strategy mixes messages a real client sends (so the fuzzer reaches deep states: a started
conversation, audio flowing, a reset mid-stream) with the broken kinds a hostile or buggy one sends:
wrong types, NaN and infinities, huge numbers, unknown keys, odd byte counts, corrupted Ogg pages.
A message is a `str` (a text frame) or `bytes` (a binary frame).
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import sphn
from hypothesis import strategies as st

from duplex import protocol
from duplex.audio import FRAME_SAMPLES, float_to_pcm16
from duplex.config import CONFIG_SCHEMA
from duplex.server.protocols.realtime.events import CLIENT_EVENTS, UNSUPPORTED_EVENTS

Message = str | bytes

# --- values ------------------------------------------------------------------------------------------
NASTY_NUMBERS = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**400, 1e308, -1e308, 1e-320,
                                 math.nan, math.inf, -math.inf, 0.5, True, False])
SCALARS = st.one_of(st.none(), st.booleans(), NASTY_NUMBERS, st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def dumps(obj: object) -> str:
    """JSON as a client may send it: Python's json writes NaN and Infinity, which some clients do too."""
    return json.dumps(obj, allow_nan=True)


CONFIGS = st.dictionaries(st.one_of(st.sampled_from(sorted(CONFIG_SCHEMA)), st.text(max_size=10)),
                          st.one_of(SCALARS, JSON_VALUES), max_size=4)


# --- audio -------------------------------------------------------------------------------------------
@st.composite
def pcm(draw: st.DrawFn, max_frames: int = 3) -> np.ndarray:
    """Float32 audio of any length up to `max_frames` frames: silence, noise or a clipped square."""
    samples = draw(st.integers(0, max_frames * FRAME_SAMPLES))
    kind = draw(st.sampled_from(["silence", "noise", "loud"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "silence":
        return np.zeros(samples, dtype=np.float32)
    level = 0.3 if kind == "noise" else 1.5
    return rng.uniform(-level, level, samples).astype(np.float32)


@st.composite
def pcm16_bytes(draw: st.DrawFn) -> bytes:
    """pcm16 payloads: whole frames, partial frames, and odd byte counts."""
    data = float_to_pcm16(np.clip(draw(pcm()), -1.0, 1.0))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]   # (may cut a sample in half)
    return data


@st.composite
def ogg_pages(draw: st.DrawFn) -> list[bytes]:
    """What an Opus client sends: a stream's pages, possibly corrupted (bit flips, cut, junk, reordered)."""
    writer = sphn.OpusStreamWriter(24000)
    pages = [page for page in (writer.append_pcm(np.clip(draw(pcm()), -1, 1)) for _ in range(draw(st.integers(1, 3))))
             if page]
    how = draw(st.sampled_from(["valid", "valid", "flip", "cut", "junk", "reorder", "empty"]))
    if not pages or how == "valid":
        return pages
    k = draw(st.integers(0, len(pages) - 1))
    page = bytearray(pages[k])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(page) - 1))
            page[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        page = page[: draw(st.integers(0, len(page)))]
    elif how == "junk":
        page = bytearray(draw(st.binary(max_size=300)))
    elif how == "empty":
        page = bytearray()
    elif how == "reorder":
        return list(reversed(pages))
    pages[k] = bytes(page)
    return pages


# --- /ws -----------------------------------------------------------------------------------------------
@st.composite
def ws_json(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from([*protocol.CLIENT_TYPES, "dance", ""]))
    msg: dict = {"type": kind}
    if kind == "start" and draw(st.booleans()):
        msg["mode"] = draw(st.one_of(st.sampled_from([*protocol.MODES, "moshi"]), SCALARS))
    if kind in ("start", "configure") and draw(st.booleans()):
        msg["config"] = draw(st.one_of(CONFIGS, SCALARS))
    if kind == "text_input":
        msg["text"] = draw(st.one_of(st.text(max_size=40), SCALARS))
    if draw(st.integers(0, 4)) == 0:
        msg[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return dumps(msg)


def ws_messages(codec: str) -> st.SearchStrategy[list[Message]]:
    """One message's worth of frames (a list: an Ogg stream's pages go as several audio messages)."""
    audio = (ogg_pages().map(lambda pages: [b"\x01" + p for p in pages]) if codec == "opus"
             else pcm16_bytes().map(lambda data: [b"\x01" + data]))
    broken = st.one_of(st.text(max_size=60), JSON_VALUES.map(dumps), st.binary(max_size=64))
    return st.one_of(ws_json().map(lambda m: [m]), audio, audio, broken.map(lambda m: [m]))


# --- /api/chat -----------------------------------------------------------------------------------------
def moshi_messages() -> st.SearchStrategy[list[Message]]:
    audio = ogg_pages().map(lambda pages: [b"\x01" + p for p in pages])
    control = st.binary(max_size=3).map(lambda payload: [b"\x03" + payload])
    any_kind = st.tuples(st.integers(0, 255), st.binary(max_size=64)).map(lambda kp: [bytes([kp[0]]) + kp[1]])
    simple = st.sampled_from([[b"\x06"], [b"\x00"], [b"\x04{}"], [b"\x05oops"], [b""], [b"\x02hi"], [b"\x03\x03"]])
    return st.one_of(audio, audio, control, any_kind, simple, st.text(max_size=20).map(lambda t: [t]))


# --- /v1/realtime --------------------------------------------------------------------------------------
@st.composite
def realtime_event(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from([*CLIENT_EVENTS, *CLIENT_EVENTS, *UNSUPPORTED_EVENTS, "no.such.event"]))
    event: dict = {"type": kind}
    if draw(st.booleans()):
        event["event_id"] = draw(st.one_of(st.text(max_size=10), SCALARS))
    if kind == "input_audio_buffer.append":
        event["audio"] = draw(st.one_of(pcm16_bytes().map(lambda b: base64.b64encode(b).decode()),
                                        st.text(max_size=20), SCALARS))
    elif kind == "session.update":
        session = draw(st.fixed_dictionaries({}, optional={
            "type": st.sampled_from(["realtime", "transcription", "x"]),
            "instructions": st.one_of(st.text(max_size=30), SCALARS),
            "output_modalities": st.one_of(st.lists(st.sampled_from(["audio", "text", "video"]), max_size=3), SCALARS),
            "audio": st.one_of(JSON_VALUES, st.just({"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                               "turn_detection": None}})),
            "model": st.one_of(st.sampled_from(["duplex", "cascade", "auto"]), SCALARS),
        }))
        event["session"] = draw(st.one_of(st.just(session), SCALARS))
    elif kind == "conversation.item.create":
        event["item"] = draw(st.one_of(JSON_VALUES, st.just({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": draw(st.text(max_size=20))}]})))
    elif kind == "conversation.item.truncate":
        event.update(item_id=draw(st.one_of(st.text(max_size=8), SCALARS)),
                     content_index=draw(SCALARS), audio_end_ms=draw(NASTY_NUMBERS))
    elif kind in ("response.create", "response.cancel") and draw(st.booleans()):
        event["response"] = draw(JSON_VALUES)
    if draw(st.integers(0, 4)) == 0:
        event[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    return dumps(event)


def realtime_messages() -> st.SearchStrategy[list[Message]]:
    broken = st.one_of(st.text(max_size=40), JSON_VALUES.map(dumps), st.binary(max_size=32))
    return st.one_of(realtime_event().map(lambda e: [e]), realtime_event().map(lambda e: [e]), broken.map(lambda m: [m]))
