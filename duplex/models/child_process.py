"""A model served by a child process over a pipe: start, handshake, death, close (stt_process.py, tts_process.py).

Children come from a fork server that has imported torch and moshi once (`multiprocessing`'s "forkserver"
context with a preload): a child starts in a fraction of a second instead of the ~3 s of importing torch again,
and it is forked from a clean single-threaded process, never from the server (whose threads, OpenMP pool and
CUDA context a forked child must not inherit). The child's target sends ("ready", info) once loaded, or
(kind, message) when it cannot load; `ChildModel` turns that into `info` or a `ChildModelError`.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import typing as tp
from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0   # loading real weights from a cold disk can take minutes
PRELOAD = ["torch", "moshi.models", "duplex.models.stt", "duplex.models.tts"]

_context: multiprocessing.context.BaseContext | None = None


def context() -> multiprocessing.context.BaseContext:
    """The fork server's context, its preload set before it first starts."""
    global _context
    if _context is None:
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload(PRELOAD)
        _context = forkserver
    return _context


class ChildModelError(RuntimeError):
    """The child could not load its model (the message says why) or is gone."""


class ChildModel:
    """One child serving one model: `launch` starts it without waiting, `ready` waits for its handshake."""

    def __init__(self, what: str, target: tp.Callable[..., None], args: tuple):
        self.what = what                           # "the speech recogniser's process", for messages
        self.conn: Connection | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        self._launch = (target, args)
        self._pending: tuple[Connection, multiprocessing.process.BaseProcess] | None = None

    def launch(self) -> None:
        parent, child = context().Pipe()
        target, args = self._launch
        process = context().Process(target=target, args=(child, *args), daemon=True,  # type: ignore[attr-defined]
                                    name=f"duplex-{target.__name__}")
        process.start()
        child.close()                              # the child's end lives in the child only: its exit is our EOF
        self._pending = (parent, process)

    def ready(self) -> tuple[str, tp.Any]:
        """Waits for the launched child's first message: ("ready", info), or why it could not load (then the
        child has exited and the caller raises)."""
        assert self._pending is not None, "launch() first"
        parent, process = self._pending
        self._pending = None
        if not parent.poll(START_TIMEOUT_S):
            process.kill()
            raise ChildModelError(f"{self.what} did not load its model in {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            process.join(5)
            raise ChildModelError(f"{self.what} exited while loading its model (exit code {process.exitcode})") from None
        if kind != "ready":
            process.join(5)
            return kind, payload
        self.conn, self.process = parent, process
        return kind, payload

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def lost(self) -> int | None:
        """The child is gone (its pipe broke): closes our end, reaps it, logs and returns its exit code."""
        process, self.process = self.process, None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if process is None:
            return None
        process.join(5)
        log.error("%s (pid %s) exited with code %s", self.what, process.pid, process.exitcode)
        return process.exitcode

    def close(self, goodbye: tp.Any) -> None:
        """Asks the child to exit (`goodbye` down the pipe), then waits for it, killing it after 10 s."""
        if self.conn is not None:
            try:
                self.conn.send(goodbye)
            except OSError:
                pass
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
            self.process = None


class ChildBacked:
    """A model whose work runs in `self.child`: its pid, liveness and `/health` entry."""

    child: ChildModel
    restarts: int

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def alive(self) -> bool:
        return self.child.alive

    def health(self) -> dict:
        return {"process": self.pid, "alive": self.alive, "restarts": self.restarts}
