"""Shared fixtures: real `duplex serve` processes on loopback ports (tiny preset), real speech."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from duplex.audio import read_wav_mono24k
from duplex.server.process import ServerProcess



MODEL_PROCESS_FLAGS = ("--stt-process", "--tts-process")


def start_server(tmp_dir: Path, *args: str) -> ServerProcess:
    """A `duplex serve` child on a free loopback port, its log kept in tmp_dir for failures.

    Its STT and TTS run on threads unless the test asks for `--stt-process` / `--tts-process`: most servers
    here test the protocol, recordings, the fleet, the duplex model, and a start without the model children
    is ~2.5 s shorter (~40 starts in the suite). The children, the default on CPU, are tested by
    cascade_server's tests (tests/test_cascade*.py) and tests/test_{stt,tts}_process.py."""
    if not any(arg in MODEL_PROCESS_FLAGS for arg in args):
        args = (*args, "--stt-process", "off", "--tts-process", "off")
    return ServerProcess(*args, log_path=tmp_dir / f"server-{time.monotonic_ns()}.log",
                         log_level=os.environ.get("DUPLEX_TEST_LOG_LEVEL", "info"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for models built in the test process (as the server's model threads on a small CPU):
    a second one gains tiny steps nothing, and its spinning makes a shared 2-core machine crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory):
    """The main test server: tiny preset, 32 slots."""
    server = start_server(tmp_path_factory.mktemp("server"), "--slots", "32")  # > 16: steps compute the active rows only
    yield server
    server.stop()


@pytest.fixture(scope="session")
def small_server(tmp_path_factory):
    """Two slots and an access token, duplex only: capacity and authorization tests."""
    server = start_server(tmp_path_factory.mktemp("small"), "--slots", "2", "--token", "s3cret", "--no-cascade")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llm_standin():
    from .llm_standin import LLMStandIn

    standin = LLMStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def cascade_server(tmp_path_factory, llm_standin):
    """Tiny duplex (2 slots) + tiny STT/TTS with the LLM behind a local OpenAI-compatible stand-in."""
    server = start_server(tmp_path_factory.mktemp("cascade"), "--slots", "2", "--cascade-slots", "4",
                          "--llm-url", llm_standin.url, "--llm-timeout", "2",
                          "--stt-process", "auto", "--tts-process", "auto")   # the default: children on CPU
    yield server
    server.stop()


def espeak(text: str, path: Path) -> np.ndarray:
    """Real speech: espeak-ng to WAV, read back as 24 kHz mono float32."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the tests (apt-get install espeak-ng); .ci/run installs it")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return read_wav_mono24k(str(path))


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> np.ndarray:
    """About 3 s of speech followed by 1 s of silence."""
    pcm = espeak("Hello there. Can you hear me? Tell me something about the weather today.",
                 tmp_path_factory.mktemp("speech") / "hello.wav")
    return np.concatenate([pcm, np.zeros(24000, dtype=np.float32)])
