"""`duplex bench`: duplex and cascade latency compared in one run, over the real protocol.

Scripted conversations (espeak-ng speech, or the user's WAV files) are played through the real Python
client at real-time pace, in both modes, N conversations at once for each N of --sessions. Every figure is
measured on the client's clock, from the audio itself, except the cascade's stages (end of turn decided ->
STT final -> LLM first token -> first words to the TTS -> TTS first frame -> first audio sent), which the
server measures and sends in each turn's `metrics` (docs/bench.md says what each one means).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import typing as tp
from pathlib import Path

import numpy as np

from ..audio import read_wav_mono24k
from ..protocol import CASCADE_STAGES
from ..server.process import ServerProcess
from .latency import FIGURES, run_load

DEFAULT_SCRIPT = ["Hello, how are you today?", "Tell me a long story about the sea, please.",
                  "What is the weather like?", "Thank you, that is all for now."]


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


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def markdown_table(results: dict) -> str:
    lines = ["| mode | sessions | figure | p50 ms | p90 ms | p99 ms | n |", "|---|---|---|---|---|---|---|"]
    for mode, by_n in results["modes"].items():
        for n, figures in by_n.items():
            for name, d in figures.items():
                if name not in FIGURES:
                    continue           # the stages (stage_table), when conversations began
                cells = [_ms(d[k]) for k in ("p50", "p90", "p99")]
                lines.append(f"| {mode} | {n} | {name.removesuffix('_ms')} | {' | '.join(cells)} | {d['n']} |")
    return "\n".join(lines)


def stage_table(results: dict) -> str:
    """The cascade's stages per N (server clock): each from the end of the user's turn decided, and the
    time each one took after the one before it (`step`); empty when no cascade turn reported stages."""
    lines = ["| sessions | stage | p50 ms | p90 ms | p99 ms | step p50 ms | step p90 ms | n |",
             "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for n, figures in results["modes"].get("cascade", {}).items():
        for stage, d in figures.get("stages", {}).items():
            at, step = d["from_end_of_turn"], d["step"]
            cells = [_ms(at[k]) for k in ("p50", "p90", "p99")] + [_ms(step[k]) for k in ("p50", "p90")]
            lines.append(f"| {n} | {stage} | {' | '.join(cells)} | {at['n']} |")
        if "audio_gaps" in figures:
            g = figures["audio_gaps"]
            gaps.append(f"N = {n}: {g['gaps']} in {g['turns']} turns ({g['gap_ms']:.0f} ms)")
    if len(lines) == 2:
        return ""
    return "\n".join(lines) + ("\n\naudio gaps (the assistant's audio ran out at the client mid-turn): " + "; ".join(gaps)
                              if gaps else "")


def plot(results: dict, path: Path) -> None:
    """One panel per figure: grouped bars per concurrency, one bar per mode (p50), whisker to p90; and, when
    the cascade ran, a panel of its stages from the end of turn decided, one bar per concurrency."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["response_latency_ms", "interrupt_latency_ms", "first_transcript_ms"]
    counts = [str(n) for n in results["sessions"]]
    modes = list(results["modes"])
    stages = any(figures.get("stages") for figures in results["modes"].get("cascade", {}).values())
    panels = len(names) + (1 if stages else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    for ax, name in zip(axes, names):
        series = {mode: [results["modes"][mode].get(n, {}).get(name) for n in counts] for mode in modes}
        _bars(ax, counts, series)
        ax.set_title(name.removesuffix("_ms").replace("_", " ") + " (p50, whisker p90)")
        ax.set_xlabel("concurrent conversations")
    if stages:
        ax = axes[-1]
        by_n = results["modes"]["cascade"]
        names_s = list(CASCADE_STAGES)
        series = {f"N = {n}": [by_n.get(n, {}).get("stages", {}).get(stage, {}).get("from_end_of_turn")
                               for stage in names_s] for n in counts}
        _bars(ax, [stage.replace("_", " ") for stage in names_s], series)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_title("cascade stages from end of turn decided (p50, whisker p90)", fontsize=9)
    fig.suptitle(f"duplex vs cascade: {results['models']}, device {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _bars(ax, labels: list[str], series: dict[str, list[dict | None]]) -> None:
    """Grouped bars: one group per label, one bar per series (its p50, whisker to its p90)."""
    width = 0.8 / max(len(series), 1)
    for m, (name, dists) in enumerate(series.items()):
        xs, p50, err = [], [], []
        for i, d in enumerate(dists):
            if d and d["n"]:
                xs.append(i + (m - (len(series) - 1) / 2) * width)
                p50.append(d["p50"])
                err.append(max(0.0, d["p90"] - d["p50"]))
        ax.bar(xs, p50, width=width, yerr=[[0] * len(err), err], capsize=4, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("ms")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


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
    p.add_argument("--spread-s", type=float, default=2.0,
                   help="conversation i of N begins i x SPREAD / N seconds after the first, so that their turns end "
                        "at different moments, as real users' do; 0 begins them together, every turn ending at once "
                        "(the worst case)")
    p.add_argument("--log-level", default="warning", help="log verbosity")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.sessions.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)
    server = None if args.url else start_server(args, max(counts))
    url = args.url if server is None else server.http_url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = make_script(args, Path(tmp))
        results: dict[str, tp.Any] = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
                   "device": args.device or "auto", "models": f"preset {args.preset}" if not args.url else url,
                   "slots": max(counts), "sessions": counts, "turns": len(script), "spread_s": args.spread_s,
                   "modes": {}}
        for mode in modes:
            results["modes"][mode] = {}
            for n in counts:
                print(f"bench: {mode}, {n} conversation(s) ...", file=sys.stderr, flush=True)
                results["modes"][mode][str(n)] = asyncio.run(run_load(url, mode, n, script, args.token,
                                                                          args.spread_s))
    finally:
        if server is not None:
            server.stop()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, args.out / "latency.png")
    print(markdown_table(results))
    stage_rows = stage_table(results)
    if stage_rows:
        print("\ncascade stages (server clock, ms from the end of the user's turn decided; step: from the stage "
              "before)\n")
        print(stage_rows)
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'latency.png'}", file=sys.stderr)
    return 0
