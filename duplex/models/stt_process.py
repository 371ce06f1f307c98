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
import multiprocessing
import signal
import threading
import time
import traceback
import typing as tp
from multiprocessing.connection import Connection

import torch

from .stt import SttBatch, SttStepInput, SttStepOutput

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0   # loading real weights from a cold disk can take minutes


class SttProcessError(RuntimeError):
    """The recogniser's process failed a step or is gone."""


class SttProcess:
    """`SttBatch`'s step, served by a child process (same slots, same outputs, bit for bit)."""

    def __init__(self, spec: str, slots: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 threads: int | None = None):
        self.spec, self.slots, self.device, self.dtype = spec, slots, device, dtype
        self.threads = threads or torch.get_num_threads()
        self.restarts = 0
        self._lock = threading.Lock()       # one step at a time (the scheduler has one model thread anyway)
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        info = self._start()
        self.flush_frames: int = info["flush_frames"]
        self.has_pause: bool = info["has_pause"]
        self.delay_ms: float = info["delay_ms"]

    def _start(self) -> dict:
        # spawn, not fork: the server has threads (and maybe CUDA) that a forked child must not inherit
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=serve_stt, name="duplex-stt",
                                  args=(child, self.spec, self.slots, self.device, str(self.dtype), self.threads),
                                  daemon=True)
        process.start()
        child.close()                       # the child's end lives in the child only: its exit is our EOF
        if not parent.poll(START_TIMEOUT_S):
            process.kill()
            raise SttProcessError(f"the speech recogniser's process did not load {self.spec} in {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            process.join(5)
            raise SttProcessError(f"the speech recogniser's process exited while loading {self.spec} "
                                  f"(exit code {process.exitcode}); run with --stt-process off to see the error "
                                  "in this process") from None
        if kind != "ready":
            process.join(5)
            raise SttProcessError(f"the speech recogniser's process could not load {self.spec}:\n{payload}")
        self._conn, self._process = parent, process
        return payload

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def step(self, batch: SttStepInput) -> SttStepOutput:
        with self._lock:
            if self._conn is None:
                self._restart()
            assert self._conn is not None
            try:
                self._conn.send(batch)
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                code = self._lost()
                raise SttProcessError(f"the speech recogniser's process exited (code {code}); it is restarted at "
                                      "the next step, and every conversation's recogniser starts afresh") from None
        if kind != "ok":
            raise SttProcessError(f"the speech recogniser's step failed in its process:\n{payload}")
        return payload

    def _lost(self) -> int | None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        process.join(5)
        log.error("the speech recogniser's process (pid %s) exited with code %s", process.pid, process.exitcode)
        return process.exitcode

    def _restart(self) -> None:
        began = time.monotonic()
        self._start()
        self.restarts += 1
        log.warning("the speech recogniser's process was restarted (pid %s, %.1f s, restart %d); "
                    "every slot starts afresh", self.pid, time.monotonic() - began, self.restarts)

    def health(self) -> dict:
        return {"process": self.pid, "alive": self.alive, "restarts": self.restarts}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                self._conn.close()
                self._conn = None
            if self._process is not None:
                self._process.join(10)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join(5)
                self._process = None


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
