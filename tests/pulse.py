"""A private PulseAudio daemon for tests: a sound card for programs that want one, on a machine with none.

Two null sinks: `mic` (what is played into it is the default microphone, through its monitor) and
`speaker` (the default output; its monitor records what a program played). Programs reach it through
PULSE_SERVER (PortAudio through ALSA's pulse plugin, which Debian's pulseaudio package brings along).
The daemon runs in the foreground as a child of the test, with its own runtime and home folders, so it
never meets a user's or the system's PulseAudio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

TOOLS = ("pulseaudio", "pactl", "paplay", "parec")
READY_TIMEOUT_S = 15.0


def missing() -> str | None:
    """Why a private PulseAudio cannot run here (a missing tool or library), or None."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install pulseaudio)"
    try:
        import sounddevice  # noqa: F401  (needs the PortAudio library just to import)
    except (ImportError, OSError) as exc:
        return f"sounddevice cannot load PortAudio ({exc}; apt-get install libportaudio2)"
    return None


class PrivatePulse:
    def __init__(self, folder: Path):
        self.folder = folder
        self.socket = folder / "native"
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        # Only what these programs need from the environment: no user session, no D-Bus.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "XDG_RUNTIME_DIR": str(folder), "PULSE_SERVER": f"unix:{self.socket}"}
        self.log_path = folder / "pulseaudio.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
                 "--disable-shm=yes", "--log-target=stderr",
                 f"--load=module-native-protocol-unix socket={self.socket} auth-anonymous=1",
                 "--load=module-null-sink sink_name=speaker rate=24000 channels=1",
                 "--load=module-null-sink sink_name=mic rate=24000 channels=1"],
                env=self.env, stdout=log, stderr=log)
        self._wait_ready()
        self.pactl("set-default-sink", "speaker")
        self.pactl("set-default-source", "mic.monitor")

    def _wait_ready(self) -> None:
        """Polls `pactl info` (the daemon has no readiness signal to wait on), bounded."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PulseAudio did not start; its log:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def pactl(self, *args: str) -> str:
        return subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def play_into_mic(self, wav: Path) -> subprocess.Popen:
        """Plays `wav` into the microphone (once; stop the returned process when done)."""
        return subprocess.Popen(["paplay", "--device=mic", str(wav)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def record_speaker(self, raw: Path) -> subprocess.Popen:
        """Records what is played to the speaker as raw s16le 24 kHz mono into `raw` until stopped."""
        with open(raw, "wb") as out:   # the child keeps its own copy of the descriptor
            return subprocess.Popen(["parec", "--device=speaker.monitor", "--format=s16le", "--rate=24000",
                                     "--channels=1", "--raw"], env=self.env, stdout=out, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
