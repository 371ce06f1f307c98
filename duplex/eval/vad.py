"""Where someone speaks in a recording: speech detectors behind one small protocol.

`duplex eval` finds the assistant's speech from the audio the server returned, never from the server's
own events, so duplex and cascade are judged by the same rule. Two detectors are interchangeable:

- `SileroDetector`: silero-vad (MIT, the model ships inside the PyPI package; no hub download), the
  detector Full-Duplex-Bench itself uses for its backchannel and timing metrics.
- `EnergyDetector`: documented energy rules (20 ms windows above a dBFS threshold), no model at all.
"""

from __future__ import annotations

import typing as tp

import numpy as np

from ..audio import SAMPLE_RATE, resample, rms_dbfs

Segment = tuple[float, float]  # (start_s, end_s) on the scenario's timeline


class SpeechDetector(tp.Protocol):
    """Speech segments of a mono recording, in seconds from its first sample, sorted, not overlapping."""

    name: str

    def segments(self, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Segment]: ...


class EnergyDetector:
    """Energy rules: a `window_ms` window is voiced when its RMS is above `threshold_dbfs`; runs of voiced
    windows closer than `bridge_ms` are joined; runs shorter than `min_speech_ms` are dropped."""

    name = "energy"

    def __init__(self, threshold_dbfs: float = -45.0, window_ms: float = 20.0, bridge_ms: float = 100.0,
                 min_speech_ms: float = 60.0):
        self.threshold_dbfs = threshold_dbfs
        self.window_ms = window_ms
        self.bridge_ms = bridge_ms
        self.min_speech_ms = min_speech_ms

    def segments(self, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Segment]:
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        window = max(1, int(round(sample_rate * self.window_ms / 1000)))
        n = pcm.size // window
        voiced = [rms_dbfs(pcm[k * window:(k + 1) * window]) > self.threshold_dbfs for k in range(n)]
        runs: list[Segment] = []
        start: int | None = None
        for k, v in enumerate([*voiced, False]):
            if v and start is None:
                start = k
            elif not v and start is not None:
                runs.append((start * window / sample_rate, k * window / sample_rate))
                start = None
        joined = merge_segments(runs, self.bridge_ms / 1000)
        return [(s, e) for s, e in joined if e - s >= self.min_speech_ms / 1000]


class SileroDetector:
    """silero-vad on the recording resampled to 16 kHz, with its default thresholds."""

    name = "silero"
    RATE = 16000

    def __init__(self, threshold: float = 0.5):
        try:
            from silero_vad import load_silero_vad
        except ImportError as exc:  # pragma: no cover - a main dependency
            raise RuntimeError("silero-vad is not installed: pip install silero-vad, or use --vad energy") from exc
        self.threshold = threshold
        self._model = load_silero_vad()  # the TorchScript model inside the package

    def segments(self, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Segment]:
        import torch
        from silero_vad import get_speech_timestamps


        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0:
            return []
        if sample_rate != self.RATE:
            pcm = resample(pcm, sample_rate, self.RATE)
        with torch.inference_mode():
            found = get_speech_timestamps(torch.from_numpy(pcm), self._model, sampling_rate=self.RATE,
                                          threshold=self.threshold)
        self._model.reset_states()
        return [(int(t["start"]) / self.RATE, int(t["end"]) / self.RATE) for t in found]


DETECTORS: dict[str, tp.Callable[[], SpeechDetector]] = {"silero": SileroDetector, "energy": EnergyDetector}


def make_detector(name: str) -> SpeechDetector:
    if name not in DETECTORS:
        raise ValueError(f"unknown speech detector {name!r}: choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name]()


def merge_segments(segments: tp.Iterable[Segment], gap_s: float) -> list[Segment]:
    """Sorted segments with those separated by at most `gap_s` joined into one."""
    merged: list[Segment] = []
    for start, end in sorted(segments):
        if merged and start - merged[-1][1] <= gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
