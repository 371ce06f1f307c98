"""`scripts/bench_loss.py`'s work: the conversation, the runs (transport x loss), the figures, the table.

Each run is one transport (`loss_runs.LossTransport`) at one loss rate, the same user audio, the same
round trip; runs go one after the other against one server, so they share the machine's load. The
figures of each run are `playout.summary`'s; the table sets each beside its transport's loss-free run.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import typing as tp
from pathlib import Path

import aiohttp
import numpy as np

from ..audio import SAMPLE_RATE, read_wav_mono24k
from .link import LinkModel
from .loss_runs import LossTransport, RunResult
from .playout import summary

SENTENCES = ["Hello, can you hear me well on this line?", "I am calling from a train, the network is patchy.",
             "Tell me about the weather tomorrow, please.", "And what should I cook tonight?",
             "Thank you, that will be all for now."]
PAUSE_S = 1.5   # between the user's sentences: the assistant's turn


def conversation(wav: str | None, seconds: float) -> np.ndarray:
    """The user's side [n] float32 24 kHz: the WAV as given, or espeak-ng sentences with pauses, cut to
    `seconds` (0: whole)."""
    if wav:
        pcm = read_wav_mono24k(wav)
    else:
        pieces = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, text in enumerate(SENTENCES):
                path = Path(tmp) / f"s{i}.wav"
                subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
                pieces += [read_wav_mono24k(str(path)), np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)]
        pcm = np.concatenate(pieces)
        while seconds and pcm.size < seconds * SAMPLE_RATE:
            pcm = np.concatenate([pcm, pcm])
    return pcm[: int(seconds * SAMPLE_RATE)] if seconds else pcm


async def idle(http_url: str, timeout_s: float = 60.0) -> None:
    """Until the server's last conversation has ended (its slot freed), so each run starts alone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            async with http.get(f"{http_url}/health") as response:
                state = await response.json()
            if all(engine.get("active", 0) == 0 for engine in state.get("engines", {}).values()):
                return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the server still had a conversation {timeout_s:g} s after the run")


def figures(result: RunResult, jitter_buffer_ms: float, one_way_s: float) -> dict[str, tp.Any]:
    out = summary(result.pieces, result.sent_at, jitter_buffer_ms / 1000.0, one_way_s)
    out["relay"] = result.relay.as_dict()
    out.update(result.extra)
    return out


async def run_all(http_url: str, transports: tp.Sequence[LossTransport], losses: tp.Sequence[float], pcm: np.ndarray,
                  link: LinkModel, jitter_buffer_ms: float, warmup_s: float = 3.0, settle_s: float = 4.0,
                  log: tp.Callable[[str], None] = print) -> dict[str, dict]:
    """{transport: {"<loss %>": figures}} for each transport and loss rate, in that order."""
    results: dict[str, dict] = {}
    if warmup_s > 0:   # the server's first conversation pays its warm-up: not measured
        await transports[0].run(http_url, pcm[: int(warmup_s * SAMPLE_RATE)], LinkModel(0.0, 0.0), settle_s=1.0)
        await idle(http_url)
    for transport in transports:
        for loss in losses:
            model = LinkModel(loss / 100.0, link.rtt_ms, link.rto_ms, link.mss, link.seed, link.directions)
            result = await transport.run(http_url, pcm, model, settle_s=settle_s)
            figs = results.setdefault(transport.name, {})[f"{loss:g}"] = figures(result, jitter_buffer_ms, model.one_way_s)
            log(f"  {transport.name:9s} loss {loss:g} %: {figs['pieces']} pieces, path delay {figs['path_delay_ms']}, "
                f"path gaps {figs['path_gaps']} ({figs['path_gap_ms']} ms), turnaround {figs['turnaround_ms']}, "
                f"gaps {figs['gaps']} ({figs['gap_ms']} ms)")
            await idle(http_url)
    return results


def _ratio(value: float | None, base: float | None) -> str:
    if value is None:
        return "–"
    if not base:
        return f"{value:g}"
    return f"{value:g} (×{value / base:.1f})"


def _pair(figure: dict | None, base: dict | None) -> str:
    if not figure:
        return "–"
    return " / ".join(_ratio(figure.get(p), (base or {}).get(p)) for p in ("p50", "p99"))


def table(results: dict[str, dict]) -> str:
    """Markdown, one row per transport and loss, in brackets the ratio to that transport's first (loss-free)
    run: what the path did to the audio the server sent, then what a listener got end to end."""
    lines = ["| transport | loss | path delay p50 / p99 ms | path gaps (ms) | packets lost down / up | "
             "turnaround p50 / p99 ms | lateness p50 / p99 ms | playout gaps (ms), longest | silent ms | pieces |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_loss in results.items():
        base = next(iter(by_loss.values()))
        for loss, f in by_loss.items():
            lost = f["relay"]["lost"]
            lines.append(
                f"| {name} | {loss} % | {_pair(f['path_delay_ms'], base['path_delay_ms'])} | "
                f"{f['path_gaps']} ({f['path_gap_ms']:g}) | {lost['down']} / {lost['up']} | "
                f"{_pair(f['turnaround_ms'], base['turnaround_ms'])} | {_pair(f['lateness_ms'], base['lateness_ms'])} | "
                f"{f['gaps']} ({f['gap_ms']:g}), {f['longest_gap_ms']:g} | {f['silent_ms']:g} | {f['pieces']} |")
    return "\n".join(lines)
