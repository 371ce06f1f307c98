"""One recording's files on disk, written by the recording writer thread only (never the event loop).

- `audio.wav`: 16-bit stereo 24 kHz, user left, assistant right, sample-aligned on the conversation
  clock. Written incrementally: the two tracks arrive separately (the assistant's after the user's, as
  it is delivered), so samples are held in a window until both tracks have reached them (or the window
  is `WINDOW_S` long), then interleaved and appended. The RIFF and data sizes in the header are patched
  whenever the writer is idle, and at least every `FLUSH_S` under load, so a file cut by a SIGKILL still
  reads (up to its last patch).
  User samples are stored as round(x * 32768) (the exact inverse of the pcm16 codec's decoder: a pcm16
  user's audio round-trips bit for bit); assistant samples as the pcm16 encoder writes them for a client,
  round(x * 32767), so a replay over pcm16 can be compared bit for bit.
- `events.jsonl`: one JSON object per line, appended (a kill can cut at most the last line).
- `meta.json`: written whole at the start and again, completed, at the end (write to a temporary file,
  then rename: never half a file).
- `.open`: while the recording is being written, a file its writer holds an exclusive `flock` on, so that
  the disk cap of any process recording into the same DIR (a fleet's workers) leaves it alone; removed
  when the recording is completed. A writer that died (SIGKILL) holds no lock: its recording can go.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import typing as tp
from pathlib import Path

import numpy as np

from ...audio import SAMPLE_RATE

log = logging.getLogger(__name__)

CHANNELS = 2
BYTES_PER_SAMPLE = 2
WINDOW_S = 20.0          # the longest one track may run ahead of the other before the gap is written as silence
HEADER_BYTES = 44
USER, ASSISTANT = 0, 1
OPEN_LOCK = ".open"


def is_open(folder: Path) -> bool:
    """A recording some live process is still writing (its lock is held); False for a completed one, or
    one whose writer died. Works across processes: a fleet's workers share DIR."""
    try:
        fd = os.open(folder / OPEN_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True          # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def user_to_int16(pcm: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16, the exact inverse of the pcm16 decoder (x / 32768)."""
    return np.clip(np.round(pcm * 32768.0), -32768, 32767).astype("<i2")


def assistant_to_int16(pcm: np.ndarray) -> np.ndarray:
    """float32 -> int16 exactly as the pcm16 encoder sends it (audio.float_to_pcm16)."""
    return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2")


def wav_header(data_bytes: int) -> bytes:
    block = CHANNELS * BYTES_PER_SAMPLE
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, SAMPLE_RATE, SAMPLE_RATE * block, block, 16)
            + b"data" + struct.pack("<I", data_bytes))


class StereoWav:
    """An incrementally written stereo WAV; positions are in samples on the conversation clock."""

    def __init__(self, path: Path, window_s: float = WINDOW_S):
        self.path = path
        self.file = open(path, "wb")
        self.file.write(wav_header(0))
        self.file.flush()
        self.window = int(window_s * SAMPLE_RATE)
        self.written = 0                                  # samples per channel on disk
        self.pending: np.ndarray = np.zeros((0, CHANNELS), dtype="<i2")   # [samples, 2] from `written` on
        self.ends = [0, 0]                               # per track: end of the furthest sample received
        self.late_samples = 0                            # received for a place already written: lost

    def put(self, track: int, at: int, samples: np.ndarray) -> None:
        """`samples` int16 [n] of one track, starting at sample `at` of the conversation clock."""
        if at < self.written:
            skip = min(len(samples), self.written - at)
            self.late_samples += skip
            samples, at = samples[skip:], at + skip
        if not len(samples):
            return
        end = at + len(samples)
        need = end - self.written
        if need > len(self.pending):
            grown = np.zeros((need, CHANNELS), dtype="<i2")
            grown[:len(self.pending)] = self.pending
            self.pending = grown
        self.pending[at - self.written:end - self.written, track] = samples
        self.ends[track] = max(self.ends[track], end)
        self._write_up_to(max(min(self.ends), max(self.ends) - self.window))

    def _write_up_to(self, upto: int) -> None:
        n = upto - self.written
        if n <= 0:
            return
        self.file.write(self.pending[:n].tobytes())
        self.pending = self.pending[n:]
        self.written = upto

    def patch_header(self) -> None:
        """Makes the header's sizes say what is on disk (the writer does it when idle, and every FLUSH_S)."""
        data_bytes = self.written * CHANNELS * BYTES_PER_SAMPLE
        self.file.seek(4)
        self.file.write(struct.pack("<I", 36 + data_bytes))
        self.file.seek(40)
        self.file.write(struct.pack("<I", data_bytes))
        self.file.seek(0, os.SEEK_END)
        self.file.flush()

    def close(self) -> int:
        """Writes everything received (the shorter track padded with silence); returns samples per channel."""
        self._write_up_to(max(self.ends))
        self.patch_header()
        self.file.close()
        return self.written


class RecordingFiles:
    """audio.wav + events.jsonl + meta.json of one recording folder."""

    def __init__(self, folder: Path, meta: dict, window_s: float = WINDOW_S):
        # Made aside (a name that is no recording id: no listing or cap sees it), locked, then put in place,
        # so that no other process's cap ever sees this folder without its lock.
        if folder.exists():
            raise FileExistsError(folder)
        aside = folder.with_name("." + folder.name)
        aside.mkdir(parents=True, exist_ok=False)
        self.lock: tp.IO[bytes] | None = open(aside / OPEN_LOCK, "wb")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        os.rename(aside, folder)
        self.folder = folder
        self.meta = dict(meta)
        self.write_meta()
        self.wav = StereoWav(folder / "audio.wav", window_s)
        self.events = open(folder / "events.jsonl", "w", encoding="utf-8")
        self.event_count = 0

    def write_meta(self) -> None:
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        os.replace(tmp, self.folder / "meta.json")

    def event(self, entry: dict[str, tp.Any]) -> None:
        raw = entry.pop("raw", None)
        if raw is not None:   # a text message: stored parsed when it is a JSON object (a message), else as text
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            if isinstance(msg, dict):
                entry["msg"] = msg
            else:
                entry["text"] = raw
        self.events.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
        self.event_count += 1

    def flush(self) -> None:
        """events.jsonl's buffer to the file, the WAV header up to date (the writer calls it when idle)."""
        self.events.flush()
        self.wav.patch_header()

    def close(self, summary: dict[str, tp.Any]) -> dict[str, tp.Any]:
        samples = self.wav.close()
        summary = {**summary, "samples": samples, "duration_s": round(samples / SAMPLE_RATE, 3),
                   "late_samples": self.wav.late_samples, "events": self.event_count}
        self.event({"kind": "summary", **summary})
        self.events.close()
        self.meta.update(complete=True, summary=summary)
        self.write_meta()
        self._unlock()
        return summary

    def abandon(self) -> None:
        """Closes the files without completing them (the folder is about to be deleted)."""
        self.wav.file.close()
        self.events.close()
        self._unlock()

    def _unlock(self) -> None:
        """The recording is no longer being written: the lock file goes (while still held), then the lock."""
        if self.lock is None:
            return
        (self.folder / OPEN_LOCK).unlink(missing_ok=True)
        self.lock.close()
        self.lock = None
