"""Run `duplex serve` as a child process (tests, benchmarks): start it, wait until it serves, stop it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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

    def stop(self, timeout: float = 20.0) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
