"""The speech recogniser in its own process: `SttBatch`, stepped over a pipe, with its own interpreter lock.

Why: every model of the cascade runs on its own thread, but in one process the threads share one
interpreter lock. A step of these models is thousands of small torch calls, each of which gives the lock
up and takes it back, so two model threads stepping at once mostly wait for each other: measured on a
2-core machine (tiny presets), a TTS turn's first frame (19 steps) took 100 ms alone, 140-210 ms while an
STT thread stepped every 80 ms beside it (and the STT step itself doubled, 19 -> 38 ms), and 100-119 ms
with that STT in another process (docs/cascade.md, "The STT in its own process"). The STT steps every
80 ms for as long as anyone is connected, so it is the one that moves out.

The child loads the checkpoint itself (the parent never holds the STT's weights), answers each
`SttStepInput` with the `SttStepOutput` of `SttBatch.step`, and exits when the pipe closes (the server
stopped or died). A child that dies is restarted by the next step (its slots start fresh: the text
being written at that moment is lost, and logged); the step that found it dead raises `SttProcessError`,
which the scheduler reports as a failed tick.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
import typing as tp
from multiprocessing.connection import Connection

import torch

from .child_process import ChildBacked, ChildModel, ChildModelError
from .stt import SttBatch, SttStepInput, SttStepOutput

log = logging.getLogger(__name__)


class SttProcessError(RuntimeError):
    """The recogniser's process failed a step or is gone."""


class SttProcess(ChildBacked):
    """`SttBatch`'s step, served by a child process (same slots, same outputs, bit for bit).

    `wait=False` only launches the child (the server loads its other models meanwhile); `wait_ready()` then."""

    def __init__(self, spec: str, slots: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 threads: int | None = None, *, wait: bool = True):
        self.spec, self.slots = spec, slots
        self.restarts = 0
        self._lock = threading.Lock()       # one step at a time (the scheduler has one model thread anyway)
        self.child = ChildModel("the speech recogniser's process", serve_stt,
                                (spec, slots, device, str(dtype), threads or torch.get_num_threads()))
        self.child.launch()
        self.flush_frames = self.delay_ms = 0
        self.has_pause = False
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        info = self._ready()
        self.flush_frames, self.has_pause, self.delay_ms = info["flush_frames"], info["has_pause"], info["delay_ms"]

    def _ready(self) -> dict:
        try:
            kind, payload = self.child.ready()
        except ChildModelError as exc:
            raise SttProcessError(f"{exc}: {self.spec}; run with --stt-process off to see the error here") from None
        if kind != "ready":
            raise SttProcessError(f"the speech recogniser's process could not load {self.spec}:\n{payload}")
        return payload

    def step(self, batch: SttStepInput) -> SttStepOutput:
        with self._lock:
            if self.child.conn is None:
                self._restart()
            conn = self.child.conn
            assert conn is not None
            try:
                conn.send(batch)
                kind, payload = conn.recv()
            except (EOFError, OSError):
                code = self.child.lost()
                raise SttProcessError(f"the speech recogniser's process exited (code {code}); it is restarted at "
                                      "the next step, and every conversation's recogniser starts afresh") from None
        if kind != "ok":
            raise SttProcessError(f"the speech recogniser's step failed in its process:\n{payload}")
        return payload

    def _restart(self) -> None:
        began = time.monotonic()
        self.child.launch()
        self._ready()
        self.restarts += 1
        log.warning("the speech recogniser's process was restarted (pid %s, %.1f s, restart %d); "
                    "every slot starts afresh", self.pid, time.monotonic() - began, self.restarts)

    def close(self) -> None:
        with self._lock:
            self.child.close(None)


def serve_stt(conn: Connection, spec: str, slots: int, device: str, dtype_name: str, threads: int) -> None:
    """The child: loads the STT, says "ready" with what the engine needs to know, then steps until the pipe
    closes or a None comes. Ctrl-C is the parent's to handle: it stops us by closing the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        from .spec import resolve_checkpoint

        stt = SttBatch(resolve_checkpoint(spec), slots, device, getattr(torch, dtype_name.removeprefix("torch.")))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", {"flush_frames": stt.flush_frames, "has_pause": stt.has_pause, "delay_ms": stt.delay_ms}))
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return                          # the parent is gone
        if batch is None:
            return
        try:
            reply: tuple[str, tp.Any] = ("ok", stt.step(batch))
        except Exception:
            reply = ("error", traceback.format_exc())
        conn.send(reply)
