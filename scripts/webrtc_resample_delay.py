"""The delay the WebRTC call's resampling adds (docs/webrtc.md): an impulse through `rtc_audio.Resampler`, both
directions, fed in the pieces a call feeds (48 kHz: 20 ms RTP frames; 24 kHz: 80 ms engine frames).

Prints where the impulse comes out against where it went in (the phase delay, in output samples) and how many
samples the resampler holds back for its filter (released with the next input: added latency per direction).

    OMP_NUM_THREADS=1 python scripts/webrtc_resample_delay.py
"""

from __future__ import annotations

import numpy as np

from duplex.audio import SAMPLE_RATE
from duplex.rtc_audio import WIRE_RATE, Resampler


def measure(from_rate: int, to_rate: int, piece: int, pieces: int = 10) -> tuple[int, int, int]:
    """(where the impulse went in, in output samples; where it came out; samples held back at the end)."""
    resample = Resampler(from_rate, to_rate)
    signal = np.zeros(piece * pieces, np.float32)
    at = piece * 2 + piece // 3   # mid-piece, so a piece boundary cannot hide a shift
    signal[at] = 0.9
    out = np.concatenate([resample(signal[k:k + piece]) for k in range(0, len(signal), piece)])
    expected = round(at * to_rate / from_rate)
    return expected, int(np.argmax(np.abs(out))), round(len(signal) * to_rate / from_rate) - len(out)


def main() -> None:
    cases = {"user (48 -> 24 kHz, 20 ms pieces)": (WIRE_RATE, SAMPLE_RATE, WIRE_RATE // 50),
             "assistant (24 -> 48 kHz, 80 ms pieces)": (SAMPLE_RATE, WIRE_RATE, SAMPLE_RATE * 80 // 1000)}
    for name, (src, dst, piece) in cases.items():
        expected, got, held = measure(src, dst, piece)
        print(f"{name}: impulse in at {expected}, out at {got} (phase delay {got - expected} samples); "
              f"held back {held} samples = {held * 1000 / dst:.2f} ms")


if __name__ == "__main__":
    main()
