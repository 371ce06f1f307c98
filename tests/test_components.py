"""Components below the socket: outbox policy, model specs, tiny presets, CLI start-up errors."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from duplex.models import spec
from duplex.models.tiny import common as tiny_common
from duplex.models.tiny import moshi as tiny_moshi
from duplex.protocol import ProtocolError, parse_client_text
from duplex.server.outbox import Outbox, SlowReader


async def test_outbox_drops_oldest_audio_and_counts_it_never_blocking():
    box = Outbox(max_audio=3)
    box.put_text('{"type":"status"}')
    for value in range(5):
        box.put_audio(np.full(4, value, dtype=np.float32))
    assert box.dropped_audio == 2
    kinds = [await box.get() for _ in range(4)]
    assert kinds[0] == ("text", '{"type":"status"}')
    assert [int(pcm[0]) for _, pcm in kinds[1:]] == [2, 3, 4]  # the oldest went first


async def test_outbox_interrupt_silences_queued_audio_and_stop_drops_it():
    box = Outbox()
    for _ in range(3):
        box.put_audio(np.ones(4, dtype=np.float32))
    box.put_text("{}")
    assert box.silence_audio() == 3
    assert all(not np.any(pcm) for kind, pcm in [await box.get() for _ in range(3)])
    box.put_audio(np.ones(4, dtype=np.float32))
    assert box.drop_audio() == 1
    assert await box.get() == ("text", "{}")


async def test_outbox_reports_a_reader_that_stopped_reading():
    box = Outbox(max_total=5)
    for _ in range(6):
        box.put_text("{}")
    with pytest.raises(SlowReader):
        await asyncio.wait_for(box.get(), 1)


def test_protocol_parser_validates_config_types_and_ranges():
    assert parse_client_text('{"type":"start","config":{"seed":3,"temperature":0}}').body["config"] == \
        {"seed": 3, "temperature": 0}
    for bad in ['{"type":"start","config":{"top_k":0}}', '{"type":"start","config":{"seed":true}}',
                '{"type":"configure"}', '{"type":"start","config":[]}']:
        with pytest.raises(ProtocolError) as error:
            parse_client_text(bad)
        assert error.value.code == "bad_message"


def test_tiny_preset_is_deterministic_and_loads_from_a_local_directory(tmp_path):
    first = tiny_moshi.ensure_tiny_moshi(tmp_path / "a")
    second = tiny_moshi.ensure_tiny_moshi(tmp_path / "b")
    for name in ("config.json", tiny_moshi.MOSHI_FILE, tiny_common.MIMI_FILE, tiny_common.TOKENIZER_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    checkpoint = spec.resolve_checkpoint(str(first))  # a plain local directory spec
    assert checkpoint.moshi_weights == first / tiny_moshi.MOSHI_FILE
    assert checkpoint.mimi_config["seanet"]["n_filters"] == tiny_common.TINY_MIMI_CONFIG["seanet"]["n_filters"]
    tokenizer = checkpoint.get_text_tokenizer()
    assert checkpoint.lm_config["text_card"] == tokenizer.vocab_size()


def test_local_directory_with_a_missing_file_says_which(tmp_path):
    directory = tiny_moshi.ensure_tiny_moshi(tmp_path / "m")
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    (broken / tiny_common.MIMI_FILE).unlink()
    with pytest.raises(spec.WeightsUnavailable, match="mimi"):
        spec.resolve_checkpoint(str(broken))
    with pytest.raises(spec.WeightsUnavailable, match="config.json"):
        spec.resolve_checkpoint(str(tmp_path))


def test_unreachable_hub_repo_gives_advice(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub reads these at import time: patch the live values (no network retries).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(spec.WeightsUnavailable) as error:
        spec.checkpoint_from_hub("kyutai/moshiko-pytorch-bf16")
    assert "--preset tiny" in str(error.value) and "local directory" in str(error.value)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duplex.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_serve_help_explains_every_flag():
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--preset", "--moshi-spec", "--host", "--port", "--device", "--dtype", "--slots", "--token",
                 "--ssl", "--static", "--log-level", "--max-wait-ms", "--max-queue-frames", "--max-connections",
                 "--start-timeout-s"):
        assert flag in result.stdout, flag


def test_serve_without_gpu_or_with_a_busy_port_says_what_to_do():
    import torch

    if not torch.cuda.is_available():
        result = run_cli("serve", "--device", "cuda", "--quiet-progress")
        assert result.returncode == 2
        assert "no CUDA GPU" in result.stderr and "--device cpu" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--slots", "1", "--quiet-progress")
    assert result.returncode == 2
    assert "already in use" in result.stderr and "--port" in result.stderr


def test_ssl_dir_without_certificates_explains_how_to_make_them(tmp_path):
    result = run_cli("serve", "--ssl", str(tmp_path), "--quiet-progress")
    assert result.returncode == 2
    assert "openssl req" in result.stderr
