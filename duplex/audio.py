"""Audio plumbing shared by the server and the client: the audio clock, Ogg Opus (sphn) and PCM16
codecs, 80 ms re-framing, loudness, WAV files.

All PCM inside the server is float32 mono at 24 kHz in [-1, 1]. This module owns the audio clock's
constants; the wire protocol, the engines and the models import them from here.
"""

from __future__ import annotations

import numpy as np
import sphn

SAMPLE_RATE = 24000
FRAME_SAMPLES = 1920  # one model step: 80 ms at 24 kHz
FRAME_MS = 80
FRAME_S = FRAME_MS / 1000.0


class BadAudio(ValueError):
    """Audio bytes that cannot be decoded."""


class OpusDecoder:
    """One continuous Ogg Opus stream in, PCM out. A broken stream is reported once and resynced."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self._sample_rate = sample_rate
        self._reader = sphn.OpusStreamReader(sample_rate)

    def decode(self, data: bytes) -> np.ndarray:
        try:
            return np.asarray(self._reader.append_bytes(data), dtype=np.float32)
        except Exception as exc:  # sphn raises ValueError/RuntimeError on a bad page
            # The reader keeps the bad bytes buffered: start a fresh one so later pages can decode.
            self._reader = sphn.OpusStreamReader(self._sample_rate)
            raise BadAudio(f"undecodable Ogg Opus data: {exc}") from None


class OpusEncoder:
    """PCM in, Ogg Opus pages out (one page per 80 ms frame, headers with the first)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        self._writer = sphn.OpusStreamWriter(sample_rate)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._writer.append_pcm(np.clip(pcm, -1.0, 1.0).astype(np.float32, copy=False))


class Pcm16Decoder:
    """Little-endian int16 bytes in, float32 PCM out."""

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) % 2:
            raise BadAudio(f"pcm16 payload has an odd number of bytes ({len(data)})")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class Pcm16Encoder:
    def encode(self, pcm: np.ndarray) -> bytes:
        return float_to_pcm16(pcm)


def float_to_pcm16(pcm: np.ndarray) -> bytes:
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def make_decoder(codec: str) -> OpusDecoder | Pcm16Decoder:
    if codec == "opus":
        return OpusDecoder()
    if codec == "pcm16":
        return Pcm16Decoder()
    raise ValueError(f"unknown codec {codec!r}")


def make_codec(codec: str) -> tuple[OpusDecoder | Pcm16Decoder, OpusEncoder | Pcm16Encoder]:
    decoder = make_decoder(codec)
    return decoder, OpusEncoder() if codec == "opus" else Pcm16Encoder()


class FrameAssembler:
    """Cuts a stream of arbitrarily sized PCM chunks into exact 1920-sample frames."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES):
        self.frame_samples = frame_samples
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, pcm: np.ndarray) -> list[np.ndarray]:
        if pcm.size == 0:
            return []
        buf = np.concatenate([self._pending, pcm.astype(np.float32, copy=False)])
        n = len(buf) // self.frame_samples
        frames = [buf[i * self.frame_samples:(i + 1) * self.frame_samples] for i in range(n)]
        self._pending = buf[n * self.frame_samples:]
        return frames

    def clear(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)


def rms_dbfs(pcm: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-120 for digital silence)."""
    if pcm.size == 0:
        return -120.0
    samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
    rms = float(np.sqrt(float(np.dot(samples, samples)) / samples.size))   # one pass, no temporary array
    return 20.0 * float(np.log10(max(rms, 1e-6)))


def read_wav_mono24k(path: str) -> np.ndarray:
    """Reads any audio file sphn can read, as mono float32 at 24 kHz, without moving it in time."""
    pcm, sr = sphn.read(str(path))
    pcm = np.asarray(pcm, dtype=np.float32)
    pcm = pcm.mean(axis=0) if pcm.ndim == 2 else pcm.reshape(-1)
    return pcm if sr == SAMPLE_RATE else resample(pcm, int(sr), SAMPLE_RATE)


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling in the frequency domain: sample i of the result is time i / dst_rate.

    Not `sphn.resample`: it delays its output (32 ms from 16 kHz, 21 ms from 24 to 16 kHz), which would
    shift every timing measured against the input (latencies, annotations, alignment)."""
    n_out = int(round(pcm.size * dst_rate / src_rate))
    if pcm.size == 0 or n_out == 0:
        return np.zeros(n_out, dtype=np.float32)
    spectrum = np.fft.rfft(pcm.astype(np.float64))
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    keep = min(spectrum.size, out.size)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / pcm.size)).astype(np.float32)


def write_wav(path: str, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    sphn.write_wav(path, np.asarray(pcm, dtype=np.float32), sample_rate)
