"""`duplex client` against the real server: a WAV in, a time-aligned WAV out, transcripts and figures."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from duplex.audio import read_wav_mono24k, write_wav

from .conftest import espeak


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duplex.cli", "client", *args],
                          capture_output=True, text=True, timeout=120)


def test_client_streams_a_wav_and_writes_the_aligned_reply(tiny_server, speech, tmp_path):
    source, reply = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(str(source), speech[: 24000 * 2])
    result = run_client("--url", tiny_server.http_url, "--input", str(source), "--output", str(reply),
                        "--codec", "pcm16", "--fast", "--tail-seconds", "0.5", "--temperature", "0",
                        "--text-temperature", "0", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary = lines[-1]
    assert summary["type"] == "client_summary"
    assert summary["frames_received"] == summary["frames_sent"] > 0
    assert any(line.get("type") == "llm_response" for line in lines)
    out = read_wav_mono24k(str(reply))
    # one output frame per input frame: the reply covers the whole input timeline
    assert abs(out.size - summary["frames_sent"] * 1920) <= 1920
    assert np.abs(out).max() > 0


def test_client_reports_a_refused_token_clearly(small_server, tmp_path):
    source = tmp_path / "in.wav"
    write_wav(str(source), np.zeros(24000, dtype=np.float32))
    result = run_client("--url", small_server.http_url, "--input", str(source), "--token", "nope", "--fast")
    assert result.returncode != 0
    assert "unauthorized" in (result.stdout + result.stderr).lower()


def test_cascade_client_waits_for_the_end_of_the_reply(cascade_server, tmp_path):
    """The reply lasts longer than the tail: the client still receives all of it, up to `tts_end`."""
    source = tmp_path / "question.wav"
    question = espeak("Hello there, tell me a long story about the weather.", tmp_path / "q.wav")
    write_wav(str(source), question)
    result = run_client("--url", cascade_server.http_url, "--mode", "cascade", "--input", str(source),
                        "--codec", "pcm16", "--fast", "--tail-seconds", "0.5", "--seed", "7", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    types = [line.get("type") for line in lines]
    assert "tts_end" in types, types
    # the metrics sent with tts_end count every frame the server sent in this conversation
    turn_metrics = next(line for line in lines[types.index("tts_end"):] if line.get("type") == "metrics")
    summary = lines[-1]
    assert summary["frames_received"] == turn_metrics["frames_out"] > 0
