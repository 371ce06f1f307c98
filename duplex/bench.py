"""`duplex bench`: duplex and cascade latency compared in one run, over the real protocol.

Scripted conversations (espeak-ng speech, or the user's WAV files) are played through the real Python
client at real-time pace, in both modes, N conversations at once for each N of --sessions. Every figure is
measured on the client's clock, from the audio itself (docs/bench.md says what each one means).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .audio import read_wav_mono24k, rms_dbfs
from .client import DuplexClient
from .protocol import FRAME_SAMPLES
from .server_process import ServerProcess

SILENT_DBFS = -50.0   # a received frame below this is silence
FIGURES = ("response_latency_ms", "interrupt_latency_ms", "first_transcript_ms", "frame_turnaround_ms")
DEFAULT_SCRIPT = ["Hello, how are you today?", "Tell me a long story about the sea, please.",
                  "What is the weather like?", "Thank you, that is all for now."]


class LiveMic:
    """Sends 80 ms frames at real-time pace like a microphone: queued speech, else silence."""

    def __init__(self, client: DuplexClient):
        self.client = client
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.sent_at: list[float] = []
        self.voiced_end = 0.0            # send time of the last voiced sample so far
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: np.ndarray) -> float:
        """Queues speech; returns how long it lasts (s)."""
        n = -(-len(pcm) // FRAME_SAMPLES)
        padded = np.zeros(n * FRAME_SAMPLES, dtype=np.float32)
        padded[: len(pcm)] = pcm
        self.queue.extend(padded.reshape(n, FRAME_SAMPLES))
        return n * FRAME_SAMPLES / 24000

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            frame = self.queue.popleft() if self.queue else np.zeros(FRAME_SAMPLES, dtype=np.float32)
            await self.client.send_audio(frame)
            now = time.monotonic()
            self.sent_at.append(now)
            voiced = np.flatnonzero(np.abs(frame) > 0.01)
            if voiced.size:
                self.voiced_end = now + (voiced[-1] + 1) / 24000
            await asyncio.sleep(max(0.0, start + len(self.sent_at) * 0.08 - time.monotonic()))

    async def wait_idle(self) -> None:
        while self.queue:
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.task.cancel()


def loud(chunk) -> bool:
    return chunk.pcm.size > 0 and rms_dbfs(chunk.pcm) > SILENT_DBFS


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def conversation(url: str, mode: str, script: list[np.ndarray], token: str | None) -> dict[str, list[float]]:
    """One scripted conversation; returns samples of each figure."""
    samples: dict[str, list[float]] = {name: [] for name in FIGURES}
    async with await DuplexClient.connect(url, token=token) as client:
        await client.start(mode=mode, config={"seed": 1})
        status = await client.wait_for("status", timeout=30)
        if status.data.get("mode") != mode:
            raise RuntimeError(f"asked for {mode}, got {status.data}")
        mic = LiveMic(client)
        try:
            for turn, pcm in enumerate(script):
                mic.say(pcm)
                await mic.wait_idle()
                await asyncio.sleep(0.1)
                speech_end = mic.voiced_end
                after = lambda chunk: chunk.received_at > speech_end and loud(chunk)  # noqa: E731
                if await wait_until(lambda: any(after(c) for c in client.audio), 30):
                    first = next(c for c in client.audio if after(c))
                    samples["response_latency_ms"].append((first.received_at - speech_end) * 1000)
                transcripts = [e for e in client.events if e.type.endswith("_transcript") and e.received_at > speech_end]
                if transcripts:
                    samples["first_transcript_ms"].append((transcripts[0].received_at - speech_end) * 1000)
                if turn == len(script) // 2:   # the middle turn: cut the assistant off
                    await asyncio.sleep(0.8)
                    samples["interrupt_latency_ms"] += await cut_off(client, mic, script[0], barge_in=False)
                elif mode == "cascade":
                    await wait_until(lambda: len(client.events_of("tts_end")) + len(client.events_of("tts_stop")) > turn, 60)
                else:
                    await asyncio.sleep(1.5)
                await asyncio.sleep(0.8)
            if mode == "duplex":
                sent = mic.sent_at
                samples["frame_turnaround_ms"] = [(c.received_at - sent[c.seq]) * 1000
                                                  for c in client.audio[5:] if c.seq < len(sent)]
        finally:
            mic.close()
        await client.stop()
        await client.wait_for("stop_acknowledged", timeout=10)
    return samples


async def cut_off(client: DuplexClient, mic: LiveMic, speech: np.ndarray, barge_in: bool) -> list[float]:
    """Interrupts now; returns [ms until the assistant's audio is silent on the client]."""
    if not any(loud(c) for c in client.audio[-3:]):
        return []  # nothing to cut
    sent = time.monotonic()
    if barge_in:
        mic.say(speech)
    else:
        await client.interrupt()
    await asyncio.sleep(1.0)
    # The client is silent once the last loud frame after the cut has arrived and it has heard
    # `tts_stop` (on which a player flushes its buffer, as the browser client does).
    loud_later = [c.received_at for c in client.audio if c.received_at > sent and loud(c)]
    stops = [e.received_at for e in client.events_of("tts_stop") if e.received_at > sent]
    end = max(loud_later[-1:] + stops[:1] + [sent])
    return [(end - sent) * 1000]


def distribution(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "n": 0}
    array = np.asarray(values)
    return {"p50": round(float(np.percentile(array, 50)), 1), "p90": round(float(np.percentile(array, 90)), 1),
            "p99": round(float(np.percentile(array, 99)), 1), "n": int(array.size)}


async def run_load(url: str, mode: str, sessions: int, script: list[np.ndarray], token: str | None) -> dict:
    results = await asyncio.gather(*(conversation(url, mode, script, token) for _ in range(sessions)))
    merged = {name: [v for r in results for v in r[name]] for name in FIGURES}
    return {name: distribution(values) for name, values in merged.items() if mode == "duplex" or
            name != "frame_turnaround_ms"}


def start_server(args, slots: int) -> ServerProcess:
    extra = ["--device", args.device] if args.device else []
    return ServerProcess("--preset", args.preset, "--slots", str(slots), "--cascade-slots", str(slots), *extra)


def make_script(args, tmp: Path) -> list[np.ndarray]:
    if args.wav:
        return [read_wav_mono24k(path) for path in args.wav]
    clips = []
    for i, text in enumerate(DEFAULT_SCRIPT[: args.turns]):
        path = tmp / f"turn{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        clips.append(read_wav_mono24k(str(path)))
    return clips


def markdown_table(results: dict) -> str:
    lines = ["| mode | sessions | figure | p50 ms | p90 ms | p99 ms | n |", "|---|---|---|---|---|---|---|"]
    for mode, by_n in results["modes"].items():
        for n, figures in by_n.items():
            for name, d in figures.items():
                cells = ["–" if d[k] is None else f"{d[k]:.0f}" for k in ("p50", "p90", "p99")]
                lines.append(f"| {mode} | {n} | {name.removesuffix('_ms')} | {' | '.join(cells)} | {d['n']} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """One panel per figure: grouped bars per concurrency, one bar per mode (p50), whisker to p90."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["response_latency_ms", "interrupt_latency_ms", "first_transcript_ms"]
    counts = [str(n) for n in results["sessions"]]
    modes = list(results["modes"])
    width = 0.8 / max(len(modes), 1)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4))
    for ax, name in zip(axes, names):
        for m, mode in enumerate(modes):
            xs, p50, err = [], [], []
            for i, n in enumerate(counts):
                d = results["modes"][mode].get(n, {}).get(name)
                if d and d["n"]:
                    xs.append(i + (m - (len(modes) - 1) / 2) * width)
                    p50.append(d["p50"])
                    err.append(max(0.0, d["p90"] - d["p50"]))
            ax.bar(xs, p50, width=width, yerr=[[0] * len(err), err], capsize=4, label=mode)
        ax.set_xticks(range(len(counts)), counts)
        ax.set_title(name.removesuffix("_ms").replace("_", " ") + " (p50, whisker p90)")
        ax.set_xlabel("concurrent conversations")
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"duplex vs cascade: {results['models']}, device {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="compare duplex and cascade latency over the real protocol",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__)
    p.add_argument("--preset", default="tiny", help="model preset of the server this command starts")
    p.add_argument("--device", help="device of the server this command starts (default: its auto choice)")
    p.add_argument("--url", help="bench a running server instead of starting one")
    p.add_argument("--token", help="access token of the server at --url")
    p.add_argument("--out", type=Path, required=True, help="directory for results.json and latency.png")
    p.add_argument("--sessions", default="1", help="concurrent conversations, e.g. 1,4,16 (one curve per mode)")
    p.add_argument("--modes", default="duplex,cascade", help="modes to bench, comma-separated")
    p.add_argument("--turns", type=int, default=3, help="user turns per scripted conversation (espeak-ng script)")
    p.add_argument("--wav", nargs="+", help="your own WAV files as the user's turns, instead of espeak-ng speech")
    p.add_argument("--log-level", default="warning", help="log verbosity")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.sessions.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)
    server = None if args.url else start_server(args, max(counts))
    url = args.url or server.http_url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = make_script(args, Path(tmp))
        results = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
                   "device": args.device or "auto", "models": f"preset {args.preset}" if not args.url else url,
                   "slots": max(counts), "sessions": counts, "turns": len(script), "modes": {}}
        for mode in modes:
            results["modes"][mode] = {}
            for n in counts:
                print(f"bench: {mode}, {n} conversation(s) ...", file=sys.stderr, flush=True)
                results["modes"][mode][str(n)] = asyncio.run(run_load(url, mode, n, script, args.token))
    finally:
        if server is not None:
            server.stop()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "latency.png")
    print(markdown_table(results))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'latency.png'}", file=sys.stderr)
    return 0
