"""The recording writer: one thread that does all of the recordings' disk work, fed by a bounded queue.

The event loop and the model thread never touch a recording's files: they `offer` small closures
(an event line, a block of audio) and go on. When the queue holds `max_items` data items (a slow or
stalled disk), an offer is refused at once and the caller counts what was lost; control items
(open, close, delete) are always taken, so every recording is completed even after drops. The disk
cap (`--record-max-gb`) is enforced here too: the oldest completed recordings are deleted, logged.
Recordings in progress are never deleted, this process's or another's (a fleet's workers share DIR: each
open recording holds a lock, files.py's `is_open`).
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import threading
import time
import typing as tp
from pathlib import Path

from .files import is_open

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,120}$")   # a recording id: one safe path component
CAP_CHECK_BYTES = 16 * 1024 * 1024                              # check the disk cap every this many bytes written
BATCH_S = 0.1   # a round of the writer gathers data this long (a control job or a filling queue ends it sooner)
FLUSH_S = 0.5   # under a steady load (never idle), files are flushed (events, WAV header) at least this often


class Flushable(tp.Protocol):
    def flush(self) -> None: ...

Job = tp.Callable[[], None]


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.iterdir():
        try:
            total += path.stat().st_size
        except OSError:   # deleted meanwhile
            continue
    return total


class RecordingWriter:
    """The writer thread. `offer` (data, may be refused) and `control` (always taken) from any thread."""

    def __init__(self, directory: Path, max_bytes: int | None = None, max_items: int = 8192,
                 before_write: Job | None = None, on_deleted: tp.Callable[[str], None] | None = None):
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.before_write = before_write   # a test's stand-in for a slow disk: called before each data item
        self.on_deleted = on_deleted
        self._jobs: collections.deque[tuple[bool, Job]] = collections.deque()
        self._data_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._idle = False     # the writer waits for a first item (an offer wakes it)
        self._urgent = False   # a control job or a filling queue: the round starts now
        self._thread: threading.Thread | None = None
        self.open_ids: set[str] = set()   # writer thread only: recordings not yet completed (never deleted by the cap)
        self.dirty: set[Flushable] = set()   # writer thread only: files written since the last flush
        self._since_cap_check = 0

    # --- any thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="duplex-recording-writer", daemon=True)
        self._thread.start()

    def offer(self, job: Job) -> bool:
        """Queues a data item; False (and nothing queued) when the queue is full."""
        with self._cond:
            if self._data_items >= self.max_items or self._stopping:
                return False
            self._data_items += 1
            self._jobs.append((True, job))
            if self._idle:
                self._cond.notify()   # the first item after a quiet spell starts a round
            elif self._data_items >= self.max_items // 4 and not self._urgent:
                self._urgent = True   # filling up: end the round's gathering wait now
                self._cond.notify()
        return True

    def control(self, job: Job) -> None:
        with self._cond:
            self._jobs.append((False, job))
            self._urgent = True
            self._cond.notify()

    def stop(self) -> None:
        """Runs what is queued, then ends the thread (blocking: call it off the event loop)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    # --- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        """Rounds: wait for a first item, gather for up to BATCH_S (a control job or a filling queue cuts it
        short), then run everything gathered. The writer takes the GIL a few times a second in bursts rather
        than once per frame, which costs the event loop and the model thread less."""
        flushed = time.monotonic()
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.release()   # flushing is disk work: not under the lock the producers take
                    try:
                        self.flush()
                    finally:
                        self._cond.acquire()
                    flushed = time.monotonic()
                    self._idle = True
                    while not self._jobs and not self._stopping:
                        self._cond.wait()
                    self._idle = False
                    if not self._jobs:
                        return
                    if not self._urgent and not self._stopping:
                        self._cond.wait(BATCH_S)
                self._urgent = False
                batch = list(self._jobs)
                self._jobs.clear()
                self._data_items = 0
            for is_data, job in batch:
                try:
                    if is_data and self.before_write is not None:
                        self.before_write()
                    job()
                except Exception:
                    log.exception("recording writer: a write failed (the conversation goes on)")
            if time.monotonic() - flushed > FLUSH_S:
                self.flush()
                flushed = time.monotonic()

    def flush(self) -> None:
        """Writer thread: flushes every file written since the last flush."""
        for files in self.dirty:
            try:
                files.flush()
            except (OSError, ValueError):   # closed meanwhile, or the disk said no
                log.exception("recording writer: a flush failed")
        self.dirty.clear()

    def wrote(self, n_bytes: int) -> None:
        """Writer thread: count bytes written; past CAP_CHECK_BYTES, check the disk cap."""
        self._since_cap_check += n_bytes
        if self._since_cap_check >= CAP_CHECK_BYTES:
            self.enforce_cap()

    def enforce_cap(self) -> None:
        """Writer thread: deletes the oldest completed recordings until DIR fits in `max_bytes`."""
        self._since_cap_check = 0
        if self.max_bytes is None:
            return
        folders = sorted((p for p in self.directory.iterdir() if p.is_dir() and ID_PATTERN.match(p.name)),
                         key=lambda p: p.name)   # ids begin with the UTC start time: oldest first
        sizes = {p.name: folder_bytes(p) for p in folders}
        total = sum(sizes.values())
        for folder in folders:
            if total <= self.max_bytes:
                return
            if folder.name in self.open_ids or is_open(folder):   # open here, or in another worker
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= sizes[folder.name]
            log.info("recording %s deleted: the recordings exceeded --record-max-gb (%.3f GB)",
                     folder.name, self.max_bytes / 1e9)
            if self.on_deleted is not None:
                self.on_deleted(folder.name)
        if total > self.max_bytes:
            log.warning("recordings in progress alone exceed --record-max-gb (%.3f GB > %.3f GB)",
                        total / 1e9, self.max_bytes / 1e9)
