"""`duplex serve --record DIR`: the store of kept conversations and each socket's recorder.

`RecordingStore` is an app resource (started and stopped with the app): it owns the directory, the
writer thread (`writer.py`), the server-wide part of every `meta.json` and the counters.
`SocketRecorder` is the `ConversationRecorder` (`recorder.py`) of one socket: it keeps the
conversation clock of the current segment and turns every call into a job for the writer thread.

The conversation clock of a recording (its `t_ms`, and the sample positions in `audio.wav`) counts
the user's audio as consumed: user frame k starts where frame k-1 ended. When the user's audio
stops for longer than `GAP_S` of wall time (a client that paused, or sends only while the user
speaks), the silence is put in: the clock jumps to wall time, and the jump is logged as a `gap`
event. An assistant frame is placed when it is queued: frame-locked (duplex) beside the user frame it
answers; otherwise (cascade) right after the previous assistant frame, and never before the clock's
now (the user audio consumed so far, or wall time while the user's audio has stopped). It is written
only if the send loop sent it (its receipt), as sent: audio silenced by `interrupt` is written as the
silence that was sent, audio dropped is absent.
"""

from __future__ import annotations

import collections
import datetime
import logging
import secrets
import shutil
import threading
import time
import typing as tp
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from ... import __version__
from ...audio import SAMPLE_RATE
from ...config import SEED_LIMIT
from .recorder import AudioReceipt, ConversationRecorder
from .files import ASSISTANT, USER, RecordingFiles, assistant_to_int16, user_to_int16
from .writer import ID_PATTERN, RecordingWriter

log = logging.getLogger(__name__)

GAP_S = 1.0                 # user audio this far behind wall time: the missing time is put in as silence
RECORDED_FILES = ("audio.wav", "events.jsonl", "meta.json")


@dataclass
class Segment:
    """The event-loop side of one recording (one conversation, or one segment of it after `reset`)."""
    id: str
    t0: float                                  # time.monotonic() at begin
    gap: int = int(GAP_S * SAMPLE_RATE)        # samples of wall time without user audio that count as a gap
    files: RecordingFiles | None = None        # set by the writer thread (None: could not be opened)
    user_pos: int = 0                          # samples: where the next user frame goes
    user_starts: list[int] = field(default_factory=list)   # start of each user frame (frame-locked answers)
    assistant_frames: int = 0                  # assistant frames queued so far
    assistant_next: int = 0                    # not frame-locked: where the next assistant frame goes
    assistant_end: int = 0                     # end of the last assistant frame delivered
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    closed: bool = False
    warned: bool = False

    def now_pos(self) -> int:
        """The conversation clock now, in samples: the user's audio so far, or wall time while it has stopped."""
        wall = int((time.monotonic() - self.t0) * SAMPLE_RATE)
        return wall if wall - self.user_pos > self.gap else self.user_pos

    def clock_ms(self) -> int:
        return max(self.now_pos(), self.assistant_end) * 1000 // SAMPLE_RATE


class RecordingStore:
    """The recordings directory, its writer thread and counters; `for_socket` makes a socket's recorder."""

    def __init__(self, directory: Path, max_bytes: int | None = None, server_meta: dict | None = None,
                 weights_job: tp.Callable[[], dict] | None = None, max_items: int = 8192,
                 before_write: tp.Callable[[], None] | None = None, gap_s: float = GAP_S):
        self.directory = Path(directory)
        self.gap = int(gap_s * SAMPLE_RATE)
        self.server_meta = server_meta or {}
        self.weights: dict | str = "pending"   # weight file hashes: `weights_job` runs in a thread at start
        self.weights_job = weights_job
        self.writer = RecordingWriter(self.directory, max_bytes, max_items, before_write, on_deleted=self._deleted)
        self.open_recorders: set[SocketRecorder] = set()
        self._hasher: threading.Thread | None = None
        self.register_metrics(None)

    def register_metrics(self, registry: CollectorRegistry | None) -> None:
        """The counters, in the app's registry (create_app calls this once with it)."""
        self.dropped = Counter("duplex_recording_dropped", "Recording items lost to a full writer queue (slow disk)",
                               ["kind"], registry=registry)
        self.kept = Counter("duplex_recordings", "Recordings begun", registry=registry)
        self.deleted = Counter("duplex_recordings_deleted", "Recordings deleted to stay under --record-max-gb",
                               registry=registry)

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.writer.start()
        self.writer.control(self.writer.enforce_cap)
        if self.weights_job is not None:
            job = self.weights_job
            self._hasher = threading.Thread(target=self._hash, args=(job,), name="duplex-recording-hashes", daemon=True)
            self._hasher.start()

    def _hash(self, job: tp.Callable[[], dict]) -> None:
        try:
            self.weights = job()
        except Exception as exc:   # a hash is metadata: its failure must not stop the server
            self.weights = f"unavailable: {exc}"

    async def stop(self) -> None:
        """Completes every open recording (reason `shutdown`), then lets the writer finish (off the loop)."""
        import asyncio

        for recorder in list(self.open_recorders):
            recorder.close("shutdown")
        await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)

    async def synced(self) -> None:
        """Returns once the writer has done everything queued before this call (tests, tools)."""
        import asyncio

        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def reached() -> None:
            self.writer.flush()   # what is on disk says everything written so far
            loop.call_soon_threadsafe(done.set_result, None)
        self.writer.control(reached)
        await done

    def for_socket(self, endpoint: str) -> "SocketRecorder":
        return SocketRecorder(self, endpoint)

    def _deleted(self, recording_id: str) -> None:
        self.deleted.inc()

    # --- reading (blocking: call off the event loop) -----------------------------------------
    def folder(self, recording_id: str) -> Path | None:
        """The folder of a recording id, or None when the id is not one (no path may leave DIR)."""
        if not ID_PATTERN.match(recording_id):
            return None
        folder = self.directory / recording_id
        if folder.resolve().parent != self.directory.resolve() or not folder.is_dir():
            return None
        return folder

    def listing(self) -> list[dict]:
        import json

        out = []
        for folder in sorted(self.directory.iterdir(), key=lambda p: p.name, reverse=True):
            if not (folder.is_dir() and ID_PATTERN.match(folder.name)):
                continue
            try:
                meta = json.loads((folder / "meta.json").read_text())
            except (OSError, ValueError):
                meta = {"id": folder.name, "complete": False, "error": "meta.json unreadable"}
            files = {name: (folder / name).stat().st_size for name in RECORDED_FILES if (folder / name).exists()}
            out.append({"id": folder.name, "files": files, "meta": meta})
        return out


def new_id(session_id: str, segment: int) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    safe = "".join(c for c in session_id if c.isalnum())[:32] or uuid.uuid4().hex[:12]
    return f"{stamp}-{safe}-{segment}"


class SocketRecorder(ConversationRecorder):
    """One socket's recorder: the current segment, and the message that began it."""

    def __init__(self, store: RecordingStore, endpoint: str):
        self.store = store
        self.writer = store.writer
        self.endpoint = endpoint
        self.segment: Segment | None = None
        self.segments = 0
        self.previous_id: str | None = None
        self._last_in: tuple[str | bytes, float] | None = None   # the message being handled (it may begin a recording)

    @property
    def recording(self) -> bool:
        return self.segment is not None

    def prepare_config(self, config: dict) -> dict:
        if config.get("record") is False or "seed" in config:
            return config
        return {**config, "seed": secrets.randbelow(SEED_LIMIT)}

    # --- segments ----------------------------------------------------------------------------
    def begin(self, session_id: str, mode: str, config: dict, endpoint_info: dict | None = None) -> None:
        if self.segment is not None:
            self.end("restart")
        if config.get("record") is False:
            return
        self.segments += 1
        segment = Segment(new_id(session_id, self.segments), time.monotonic(), self.store.gap)
        now = time.time()
        meta = {
            "id": segment.id, "complete": False, "server_version": __version__, "endpoint": self.endpoint,
            "session_id": session_id, "segment": self.segments, "previous": self.previous_id, "mode": mode,
            "config": config, "seed": config.get("seed"),
            "started": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
            "started_unix": round(now, 3), **(endpoint_info or {}),
            "audio": {"file": "audio.wav", "sample_rate": SAMPLE_RATE, "channels": ["user", "assistant"],
                      "format": "pcm_s16le"},
            **self.store.server_meta, "weights": self.store.weights,
        }
        self.segment = segment
        self.store.open_recorders.add(self)
        self.store.kept.inc()
        writer = self.writer

        def open_files() -> None:
            writer.open_ids.add(segment.id)
            try:
                segment.files = RecordingFiles(self.store.directory / segment.id, meta)
            except OSError as exc:
                log.error("recording %s: cannot create its files (%s); this conversation is not kept", segment.id, exc)
                writer.open_ids.discard(segment.id)
        writer.control(open_files)
        log.info("recording %s begun (%s, %s)", segment.id, self.endpoint, mode)
        if self._last_in is not None and isinstance(self._last_in[0], str):   # what began it (`start`, `reset`)
            data, wall = self._last_in
            self._log(segment, self._in_entry(data), wall)
            self._last_in = None

    def end(self, reason: str) -> None:
        segment = self.segment
        if segment is None:
            return
        self.segment = None
        segment.closed = True
        self.previous_id = segment.id
        self.store.open_recorders.discard(self)
        summary = {"reason": reason, "dropped": dict(segment.dropped), "user_samples": segment.user_pos,
                   "ended_unix": round(time.time(), 3), "weights": self.store.weights}
        writer = self.writer

        def close_files() -> None:
            files = segment.files
            writer.open_ids.discard(segment.id)
            if files is None:
                return
            files.meta["weights"] = summary.pop("weights")
            writer.dirty.discard(files)
            done = files.close(summary)
            if done["dropped"]:
                log.warning("recording %s: lost %s to a slow disk", segment.id, done["dropped"])
            writer.enforce_cap()
        writer.control(close_files)
        log.info("recording %s ended (%s)", segment.id, reason)

    def discard(self) -> None:
        segment = self.segment
        if segment is None:
            return
        self.segment = None
        segment.closed = True
        self.store.open_recorders.discard(self)
        writer = self.writer

        def delete() -> None:
            writer.open_ids.discard(segment.id)
            if segment.files is not None:
                writer.dirty.discard(segment.files)
                segment.files.abandon()
                shutil.rmtree(segment.files.folder, ignore_errors=True)
        writer.control(delete)
        log.info("recording %s discarded: the client opted out", segment.id)

    def close(self, reason: str = "disconnect") -> None:
        self.end(reason)

    # --- messages ----------------------------------------------------------------------------
    def message_in(self, data: str | bytes) -> None:
        segment = self.segment
        self._last_in = (data, time.time())   # if handling it begins a recording, it is that one's first line
        if segment is None:
            return
        entry = self._in_entry(data)
        if isinstance(data, str):   # where it came in the user's audio: a replay sends it there
            entry["user_at"] = segment.user_pos
        self._log(segment, entry, time.time())

    @staticmethod
    def _in_entry(data: str | bytes) -> dict:
        if isinstance(data, str):
            return {"dir": "in", "kind": "text", "raw": data}
        kind = "audio" if data[:1] == b"\x01" else "binary"
        return {"dir": "in", "kind": kind, "bytes": len(data)}

    def message_out(self, data: str | bytes, *, verbatim: bool = False) -> None:
        segment = self.segment
        if segment is None:
            return
        entry = ({"dir": "out", "kind": "text", "text" if verbatim else "raw": data} if isinstance(data, str)
                 else {"dir": "out", "kind": "binary", "bytes": len(data)})
        self._log(segment, entry, time.time())

    def user_dropped(self, frames: int) -> None:
        if self.segment is not None and frames:
            self._log(self.segment, {"kind": "drop", "frames": frames}, time.time())

    def user_concealed(self, at_ms: float, ms: float) -> None:
        if self.segment is not None and ms:
            self._log(self.segment, {"kind": "concealed", "at_ms": round(at_ms, 1), "ms": round(ms, 1)}, time.time())

    def cut(self, what: str, frames: int) -> None:
        if self.segment is not None and frames:   # the message that caused it is logged anyway
            self._log(self.segment, {"kind": "cut", "what": what, "frames": frames}, time.time())

    def _log(self, segment: Segment, entry: dict, wall: float) -> None:
        entry = {"t_ms": segment.clock_ms(), "wall": round(wall, 4), **entry}

        writer = self.writer

        def write() -> None:
            if segment.files is not None:
                segment.files.event(entry)
                writer.dirty.add(segment.files)
        self._offer(segment, "events", write)

    def _offer(self, segment: Segment, kind: str, job: tp.Callable[[], None]) -> None:
        if self.writer.offer(job):
            return
        segment.dropped[kind] += 1
        self.store.dropped.labels(kind).inc()
        if not segment.warned:
            segment.warned = True
            log.warning("recording %s: the writer is behind (slow disk?); recording data is being dropped "
                        "and counted, the conversation is not affected", segment.id)

    # --- audio -------------------------------------------------------------------------------
    def user_audio(self, pcm: np.ndarray, waited_s: float = 0.0) -> None:
        segment = self.segment
        if segment is None:
            return
        # the gap rule reads when the frame arrived: a step that came late (a loaded machine, a prefill) is no pause
        behind = int((time.monotonic() - waited_s - segment.t0) * SAMPLE_RATE) - segment.user_pos
        if behind > segment.gap:   # whole frames, so that user frames stay on the 80 ms grid
            gap = behind // len(pcm) * len(pcm) if len(pcm) else behind
            self._log(segment, {"kind": "gap", "at": segment.user_pos, "samples": gap}, time.time())
            segment.user_pos += gap
        at = segment.user_pos
        segment.user_starts.append(at)
        segment.user_pos += len(pcm)
        writer = self.writer

        def write() -> None:   # the int16 conversion too runs on the writer thread
            if segment.files is not None:
                segment.files.wav.put(USER, at, user_to_int16(pcm))
                writer.dirty.add(segment.files)
                writer.wrote(len(pcm) * 4)
        self._offer(segment, "user_audio", write)

    def assistant_audio(self, samples: int, frame_locked: bool) -> AudioReceipt | None:
        segment = self.segment
        if segment is None:
            return None
        k = segment.assistant_frames
        segment.assistant_frames += 1
        if frame_locked:
            starts = segment.user_starts
            at = starts[k] if k < len(starts) else (starts[-1] + samples * (k - len(starts) + 1) if starts else k * samples)
        else:
            at = max(segment.assistant_next, segment.now_pos())
            segment.assistant_next = at + samples
        return _Receipt(self, segment, at)

    def delivered(self, segment: Segment, at: int, pcm: np.ndarray, wire: str | bytes | None) -> None:
        if segment.closed:
            return   # sent after its recording ended (the silenced tail of a reset): not part of it
        segment.assistant_end = max(segment.assistant_end, at + len(pcm))
        entry = {"dir": "out", "kind": "audio", "bytes": len(wire) if wire is not None else 0,
                 "samples": len(pcm), "at_ms": at * 1000 // SAMPLE_RATE}
        self._log(segment, entry, time.time())
        writer = self.writer

        def write() -> None:
            if segment.files is not None:
                segment.files.wav.put(ASSISTANT, at, assistant_to_int16(pcm))
                writer.dirty.add(segment.files)
                writer.wrote(len(pcm) * 4)
        self._offer(segment, "assistant_audio", write)


class _Receipt:
    """The send loop's receipt for one queued assistant frame (an `AudioReceipt`)."""

    __slots__ = ("recorder", "segment", "at")

    def __init__(self, recorder: SocketRecorder, segment: Segment, at: int):
        self.recorder, self.segment, self.at = recorder, segment, at

    def __call__(self, pcm: np.ndarray, wire: str | bytes | None) -> None:
        self.recorder.delivered(self.segment, self.at, pcm, wire)
