"""Client-side timing: a drift-free real-time send schedule, frame cutting, and placing assistant
audio on the user's input timeline."""

from __future__ import annotations

import asyncio
import time
import typing as tp
from dataclasses import dataclass, field

import numpy as np

from ..audio import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE
from .connection import AudioChunk


def align_assistant_audio(chunks: tp.Sequence[AudioChunk], *, by_arrival: bool, stream_start: float = 0.0,
                          min_samples: int = 0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Places assistant audio on the user's input timeline (sample i of the result = input sample i).

    Duplex (`by_arrival=False`): the server sends one frame per input frame, in order, so the decoded
    chunks laid end to end are already aligned. Cascade (`by_arrival=True`): each chunk starts when it
    arrived (relative to `stream_start`, the send time of input sample 0), or right after the
    previous chunk if that one is still playing, as a live player would hear it.
    The result is at least `min_samples` long (the input length), zero-padded.
    """
    pieces: list[tuple[int, np.ndarray]] = []
    cursor = 0
    for chunk in chunks:
        pcm = np.asarray(chunk.pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            continue
        position = cursor
        if by_arrival:
            arrival = int(round((chunk.received_at - stream_start) * sample_rate))
            position = max(cursor, arrival)
        pieces.append((position, pcm))
        cursor = position + pcm.size
    out = np.zeros(max(cursor, min_samples), dtype=np.float32)
    for position, pcm in pieces:
        out[position:position + pcm.size] = pcm
    return out


def split_frames(pcm: np.ndarray, frame_samples: int = FRAME_SAMPLES) -> list[np.ndarray]:
    """Cuts PCM into whole frames, zero-padding the last one."""
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    n_frames = -(-pcm.size // frame_samples)
    padded = np.zeros(n_frames * frame_samples, dtype=np.float32)
    padded[:pcm.size] = pcm
    return [padded[k * frame_samples:(k + 1) * frame_samples] for k in range(n_frames)]


@dataclass
class FramePacer:
    """Real-time send schedule on an absolute clock: frame k is due at start + k * frame period.

    Sleeping a fixed 80 ms per frame drifts (send time and scheduling add up); an absolute
    schedule does not.
    """

    start: float
    frame_seconds: float = FRAME_S
    clock: tp.Callable[[], float] = field(default=time.monotonic, repr=False)

    def due(self, k: int) -> float:
        return self.start + k * self.frame_seconds

    def delay(self, k: int) -> float:
        return max(0.0, self.due(k) - self.clock())

    async def wait(self, k: int) -> None:
        delay = self.delay(k)
        if delay > 0:
            await asyncio.sleep(delay)
