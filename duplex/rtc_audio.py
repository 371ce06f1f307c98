"""Audio between WebRTC's Opus track (48 kHz on the wire) and the conversation's 24 kHz (server and client).

aiortc decodes and encodes Opus; this module only changes the rate and paces. `Resampler` wraps PyAV's
`AudioResampler` (libswresample): it adds no phase delay (an impulse comes out at the same instant) and
holds back 16 samples at 24 kHz (0.67 ms) of filter look-ahead in each direction, released with the next
input (docs/webrtc.md, measured by `scripts/webrtc_resample_delay.py`).

`PacedTrack` is an outgoing track (the server's assistant audio, the Python client's microphone): 24 kHz
float32 is resampled to 48 kHz and queued, with markers (a response's end); aiortc's sender takes one 20 ms frame per
`recv`, paced on the wall clock as a real-time track, silence when nothing is queued. The queue is
bounded: `put` waits while more than `ahead_ms` are queued (so the session's events stay within that of
the audio they go with), and drops the oldest audio when nobody reads the track.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import time
import typing as tp

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .audio import SAMPLE_RATE

WIRE_RATE = 48000                 # Opus in WebRTC: always 48 kHz
PTIME_S = 0.020                   # one RTP packet: 20 ms
WIRE_FRAME = int(WIRE_RATE * PTIME_S)   # 960 samples
RESAMPLER_HOLD = 16               # samples (24 kHz) the resampler keeps for its filter, each direction


class Resampler:
    """Mono float32 in, mono float32 out, at another rate; streaming (state kept between calls)."""

    def __init__(self, from_rate: int, to_rate: int):
        self.from_rate = from_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
        self._pts = 0

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        """[n] float32 at `from_rate` -> [m] float32 at the other rate (m ~ n * to / from, less the hold)."""
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.float32)[None, :], format="flt",
                                           layout="mono")
        return self.frame(frame)

    def frame(self, frame: tp.Any) -> np.ndarray:
        """An av.AudioFrame (any format and layout, e.g. aiortc's decoded s16 stereo) -> [m] float32 mono."""
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"an audio track gave {type(frame).__name__}, not an AudioFrame")
        frame.sample_rate = self.from_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.from_rate)
        self._pts += frame.samples
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def inbound_resampler() -> Resampler:
    """Audio from a peer: 48 kHz from aiortc's Opus decoder -> 24 kHz."""
    return Resampler(WIRE_RATE, SAMPLE_RATE)


class Marker(tp.NamedTuple):
    """In the track's queue after some audio (a response's last): `on_played(name)` when reached."""
    name: str


class PacedTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, on_played: tp.Callable[[str], None] = lambda _: None, ahead_ms: int = 240,
                 unread_max_ms: int = 4000):
        super().__init__()
        self.on_played = on_played   # the track reached a marker: what was queued before it has gone out
        self._resample = Resampler(SAMPLE_RATE, WIRE_RATE)
        self._queue: collections.deque[np.ndarray | Marker] = collections.deque()   # 48 kHz pieces, markers
        self._queued = 0                   # samples (48 kHz) in the queue
        self._ahead = WIRE_RATE * ahead_ms // 1000
        self._unread_max = WIRE_RATE * unread_max_ms // 1000
        self._room = asyncio.Event()
        self._start: float | None = None   # wall clock of the first frame sent (None: never read)
        self._pts = 0
        self.dropped_samples = 0

    async def put(self, pcm24: np.ndarray) -> None:
        """Audio [n] float32 24 kHz (e.g. one 80 ms frame); waits while the track is more than `ahead_ms` ahead."""
        wire = self._resample(pcm24)
        while self._start is not None and self._queued > self._ahead and self.readyState == "live":
            self._room.clear()
            await self._room.wait()
        self._queue.append(wire)
        self._queued += len(wire)
        while self._queued > self._unread_max:   # nobody reads (no receiving peer): keep the newest only
            self._drop_first_audio()

    def mark(self, name: str) -> None:
        """`on_played(name)` once what is queued now has gone out."""
        self._queue.append(Marker(name))

    @property
    def queued_ms(self) -> float:
        return self._queued * 1000 / WIRE_RATE

    def clear(self) -> int:
        """Drops the queued audio (output_audio_buffer.clear, a cancelled response); returns samples dropped."""
        dropped = self._queued
        self._queue.clear()   # markers too: what they mark will not be played
        self._queued = 0
        self._room.set()
        return dropped

    def stop(self) -> None:
        super().stop()
        self._room.set()   # a `put` waiting for room returns

    def _drop_first_audio(self) -> None:
        for i, item in enumerate(self._queue):
            if not isinstance(item, Marker):
                del self._queue[i]
                self._queued -= len(item)
                self.dropped_samples += len(item)
                return

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:   # a real-time track: frame k leaves at start + k * 20 ms
            wait = self._start + self._pts / WIRE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = self._take(WIRE_FRAME)   # [960] float32
        frame = av.AudioFrame.from_ndarray((np.clip(samples, -1, 1) * 32767).astype(np.int16)[None, :],
                                           format="s16", layout="mono")
        frame.sample_rate = WIRE_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WIRE_RATE)
        self._pts += WIRE_FRAME
        return frame

    def _take(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        filled = 0
        while self._queue and filled < n:
            item = self._queue[0]
            if isinstance(item, Marker):
                self._queue.popleft()
                self.on_played(item.name)
                continue
            take = min(n - filled, len(item))
            out[filled:filled + take] = item[:take]
            filled += take
            self._queued -= take
            if take == len(item):
                self._queue.popleft()
            else:
                self._queue[0] = item[take:]
        while self._queue and isinstance(marker := self._queue[0], Marker):   # what ended on this frame
            self._queue.popleft()
            self.on_played(marker.name)
        if self._queued <= self._ahead:
            self._room.set()
        return out
