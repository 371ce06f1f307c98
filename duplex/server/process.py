"""Run `duplex serve` as a child process (tests, benchmarks): start it, wait until it serves, stop it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ServerStopError(RuntimeError):
    """`duplex serve` did not shut down cleanly: it hung past the timeout or exited non-zero."""


class ServerProcess:
    """`duplex serve --port 0 <args>`; ready once it prints its `DUPLEX_READY <url>` line.

    stderr goes to `log_path` when given (the error on a failed start quotes it), else nowhere."""

    def __init__(self, *args: str, log_path: Path | None = None, log_level: str = "warning",
                 timeout: float = 120.0):
        self.log_path = log_path
        cmd = [sys.executable, "-m", "duplex", "serve", "--port", "0", "--quiet-progress",
               "--log-level", log_level, *args]
        stderr = open(log_path, "w") if log_path is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.http_url = self._wait_ready(cmd, timeout)

    def _wait_ready(self, cmd: list[str], timeout: float) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("DUPLEX_READY "):
                return line.split()[1].strip()
            if not line and self.process.poll() is not None:
                break
        self.process.kill()
        log = f"\n{self.log()}" if self.log_path is not None else " (run it by hand to see why)"
        raise RuntimeError(f"the server did not start: {' '.join(cmd)}{log}")

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://", 1) + "/ws"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path is not None else ""

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(no log kept: pass log_path to see the server's output)"
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then wait: a clean shutdown exits 0 within `timeout` seconds.

        Anything else fails loudly (ServerStopError with the log's tail): a shutdown that hangs is
        killed and reported, and so is a non-zero exit code. Stopping twice is a no-op."""
        if self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise ServerStopError(f"the server did not exit within {timeout:g} s of SIGTERM (killed); "
                                  f"log tail:\n{self.log_tail()}") from None
        if code != 0:
            raise ServerStopError(f"the server exited with code {code} after SIGTERM; log tail:\n{self.log_tail()}")

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.stop()
        else:   # an error is already on its way: stop, and let a failed stop not hide it
            try:
                self.stop()
            except ServerStopError:
                pass
