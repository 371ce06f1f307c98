"""A peer's audio track as the conversation's input: on the clock of its RTP timestamps (docs/webrtc.md).

Two fixes to what aiortc (1.16) gives a receiver, both on our side of its API:

- `HoleSkippingJitterBuffer`: aiortc's audio jitter buffer (capacity 16 packets, prefetch 4) releases at
  most one frame per packet that arrives, and only from its oldest slot. A lost packet leaves that slot
  empty, so nothing comes out until the buffer is full (16 packets later) and `smart_remove` drops the
  hole; from then on it still releases one frame per packet, holding ~15 packets instead of ~4: the
  input stays ~220 ms later for the rest of the call. This subclass steps over a hole once `prefetch`
  frames wait behind it (when the lost packet would have been released), so the depth stays at prefetch.
  `use_hole_skipping_buffer` puts it in a receiver (a private attribute: checked, so an aiortc upgrade
  that renames it fails loudly in the tests rather than silently).
- `InputClock`: the decoded frames carry their RTP timestamp (`pts`, 1/48000); a gap (lost packets, a
  hole skipped above, DTX) is filled with silence of exactly the missing duration, so that 80 ms input
  frame k stays frame k of the user's time. Silence, not Opus concealment: aiortc decodes with FFmpeg's
  libopus through PyAV, where an empty packet means end of stream, not loss (no PLC call is exposed).
"""

from __future__ import annotations

import fractions
import typing as tp

import av
import numpy as np
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from .rtc_audio import WIRE_RATE, inbound_resampler

MAX_FILL_S = 2.0   # a longer gap (a peer that paused its track) restarts the clock instead of feeding silence


class HoleSkippingJitterBuffer(JitterBuffer):
    """aiortc's audio jitter buffer, except that a missing packet does not hold back the ones behind it."""

    def __init__(self, capacity: int = 16, prefetch: int = 4):
        super().__init__(capacity, prefetch)
        self.skipped = 0   # packets stepped over (lost, or later than `prefetch` frames)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is None:
            frame = self._release_past_hole()
        return pli, frame

    def _release_past_hole(self) -> JitterFrame | None:
        """The oldest packet held, once more than `prefetch` are held with a hole among them (aiortc's scan
        stops at the hole); empty slots before it are stepped over. One Opus packet is one frame."""
        if self._origin is None:
            return None
        held = [count for count in range(self._capacity)
                if self._packets[(self._origin + count) % self._capacity] is not None]
        if len(held) <= self._prefetch:
            return None
        if held[0]:
            self.skipped += held[0]
            self.remove(held[0])   # empty slots: only the origin moves
        packet = self._packets[self._origin % self._capacity]
        assert packet is not None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)   # type: ignore[attr-defined]


def use_hole_skipping_buffer(receiver: tp.Any) -> HoleSkippingJitterBuffer:
    """Replaces an audio `RTCRtpReceiver`'s jitter buffer (before any packet came: right after
    setRemoteDescription). Raises RuntimeError when aiortc no longer has the attribute."""
    name = "_RTCRtpReceiver__jitter_buffer"
    old = getattr(receiver, name, None)
    if not isinstance(old, JitterBuffer):
        raise RuntimeError("aiortc's RTCRtpReceiver has no audio jitter buffer where 1.16 had it")
    buffer = HoleSkippingJitterBuffer(old.capacity, old._prefetch)
    setattr(receiver, name, buffer)
    return buffer


class InputClock:
    """Decoded 48 kHz frames, in order with some missing (as aiortc's receiver gives them) -> 24 kHz float32,
    each gap in their timestamps filled with silence (`concealed_ms` in all)."""

    def __init__(self) -> None:
        self._resample = inbound_resampler()
        self._next_pts: int | None = None   # 48 kHz: where the next frame should start
        self.concealed_samples = 0           # 48 kHz
        self.late_frames = 0
        self.samples = 0                     # 48 kHz: the input's length so far, fills included

    @property
    def concealed_ms(self) -> float:
        return self.concealed_samples * 1000 / WIRE_RATE

    @property
    def position_ms(self) -> float:
        """Where the next frame (or fill) goes in the input."""
        return self.samples * 1000 / WIRE_RATE

    def frame(self, frame: tp.Any) -> np.ndarray:
        """One decoded frame -> [n] float32 24 kHz: silence for the time missing before it, then its audio."""
        pts = frame.pts
        if pts is None or frame.time_base != fractions.Fraction(1, WIRE_RATE):
            self.samples += frame.samples
            return self._resample.frame(frame)   # no clock to keep: as it comes
        gap = 0 if self._next_pts is None else pts - self._next_pts
        if gap <= -frame.samples:
            self.late_frames += 1                # wholly before the clock (a repeat): dropped
            return np.zeros(0, np.float32)
        gap = max(gap, 0)                        # overlaps a little: taken whole
        self._next_pts = pts + frame.samples
        if gap > MAX_FILL_S * WIRE_RATE:
            gap = 0                              # the peer paused: its time restarts here
        self.samples += gap + frame.samples
        if not gap:
            return self._resample.frame(frame)
        self.concealed_samples += gap
        # through the resampler, as the frame's own format: its held tail stays first
        silent = av.AudioFrame(format=frame.format.name, layout=frame.layout.name, samples=gap)
        for plane in silent.planes:
            plane.update(bytes(plane.buffer_size))
        return np.concatenate([self._resample.frame(silent), self._resample.frame(frame)])
