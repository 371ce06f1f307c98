"""The socket between `duplex eval`'s client and the server, replayed in process: what the model hears and
what the user hears go through the same codec classes (`duplex.audio`) the client and the server use.

Up: the client encodes each 80 ms frame (`DuplexClient.send_audio`); the server decodes each message and
cuts the stream into model frames (`Session.handle_binary`, `FrameAssembler`). Opus delays the stream by
its decoder's lookahead and holds back the last samples, so the model's frame k is not input frame k
shifted by nothing, and the last frame may never reach the model: both replayed as they happen.
Down: the server encodes each output frame (one Ogg page per frame), the client decodes each message.

Both are deterministic functions of their input (libopus is), which is what makes offline scores equal
the real-time path's. sphn's Opus writer holds the GIL: the offline runner calls these in worker processes.
"""

from __future__ import annotations

import numpy as np

from ..audio import FRAME_SAMPLES, FrameAssembler, OpusEncoder, Pcm16Encoder, make_decoder
from ..client import split_frames

CODECS = ("opus", "pcm16")


def _encoder(codec: str) -> OpusEncoder | Pcm16Encoder:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (one of {', '.join(CODECS)})")
    return OpusEncoder() if codec == "opus" else Pcm16Encoder()


def uplink(pcm: np.ndarray, codec: str) -> np.ndarray:
    """A scenario's input [N] (zero-padded to whole frames, as the client sends it) -> the frames the
    server hands the model [M, F] (M <= ceil(N / F))."""
    encoder, decoder, frames = _encoder(codec), make_decoder(codec), FrameAssembler()
    heard: list[np.ndarray] = []
    for frame in split_frames(pcm):
        payload = encoder.encode(frame)
        if payload:
            heard += frames.push(decoder.decode(payload))
    return np.stack(heard) if heard else np.zeros((0, FRAME_SAMPLES), np.float32)


def downlink(frames: np.ndarray, codec: str) -> np.ndarray:
    """The model's output frames [M, F] -> the audio the client decodes, end to end [S]."""
    encoder, decoder = _encoder(codec), make_decoder(codec)
    pieces = [decoder.decode(payload) for payload in (encoder.encode(frame) for frame in frames) if payload]
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def on_audio_clock(received: np.ndarray, samples: int) -> np.ndarray:
    """The decoded output stream [S] on the scenario's timeline [samples]: output frame k answers input
    frame k, which a microphone has whole (and sends) at (k + 1) * 80 ms, so the stream starts one frame
    in. What a listener would hear with a zero turnaround (no compute, no network)."""
    out = np.zeros(samples, dtype=np.float32)
    body = received[: max(0, samples - FRAME_SAMPLES)]
    out[FRAME_SAMPLES: FRAME_SAMPLES + body.size] = body
    return out
