"""`duplex eval`: how a running server takes turns (pause handling, backchannels, turn-taking, interruptions).

Plays each scenario of a set (generated with espeak-ng, your own folder, or Full-Duplex-Bench's data)
through the real Python client at real-time pace, in each mode, finds the assistant's speech in the
audio that came back with one speech detector for both modes, and scores it against the scenario's
annotations (docs/eval.md). Writes OUT/results.json, OUT/results.md, OUT/eval.png and every recording
(OUT/<mode>/<id>/output.wav, on the timeline of the scenario's input.wav). `--score DIR` scores such
recordings again (another detector, or another system's recordings); `--compare A B` tabulates two
results files.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import sys
import typing as tp
from pathlib import Path

import aiohttp
import numpy as np
from tqdm import tqdm

from ..audio import SAMPLE_RATE, write_wav
from ..client import ServerClosed
from ..protocol import MODES
from .fdb import convert_fdb
from .generate import generate_set
from .metrics import aggregate, score
from .offline_cli import offline_problem, play_offline
from .report import compare_table, markdown_table, plot
from .runner import CLOCKS, Played, ScenarioRunError, play
from .scenarios import ANNOTATIONS, INPUT_WAV, KINDS, Scenario, ScenarioError, load_set, read_audio
from .vad import DETECTORS, SpeechDetector, make_detector
from .wire import CODECS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score how a running server takes turns (Full-Duplex-Bench-style scenarios)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__)
    p.add_argument("--url", help="the running server, e.g. http://127.0.0.1:8998 (start one with `duplex serve`)")
    p.add_argument("--token", help="access token of the server at --url")
    p.add_argument("--out", type=Path, help="folder for results.json, results.md, eval.png and the recordings")
    p.add_argument("--set", type=Path, dest="scenario_set",
                   help="a scenario folder (<id>/input.wav + <id>/scenario.json, docs/eval.md); default: generate one "
                        "into OUT/scenarios")
    p.add_argument("--fdb", type=Path, metavar="DIR",
                   help="Full-Duplex-Bench data (its v1_0 folder, or one task folder): converted into OUT/scenarios, then "
                        "run (without --url: only converted)")
    p.add_argument("--per-kind", type=int, default=2, help="generated scenarios of each kind")
    p.add_argument("--kinds", default=",".join(KINDS), help="kinds to generate, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated set and of the server's sampling")
    p.add_argument("--greedy", action="store_true",
                   help="sample nothing: temperature and text_temperature 0 in each conversation's config (argmax)")
    p.add_argument("--modes", help="modes to evaluate, comma-separated (default: duplex,cascade; duplex with --offline)")
    p.add_argument("--vad", choices=sorted(DETECTORS), default="silero",
                   help="speech detector for the returned audio (silero-vad, or energy rules)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="scenarios played at once (each its own conversation; keep it within the server's slots)")
    p.add_argument("--warmup", type=int, default=1,
                   help="unscored conversations (the set's shortest scenario) before each mode's run: a fresh server's "
                        "first turns pay one-time costs")
    p.add_argument("--tail-s", type=float, default=0.0,
                   help="silence sent after each scenario's input (generated scenarios already end with 3 s)")
    p.add_argument("--score", type=Path, metavar="DIR",
                   help="score recordings made earlier instead of running: DIR/<mode>/<id>/output.wav (the layout this "
                        "command writes; another system's recordings work too), scenarios from --set or DIR/scenarios")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                   help="compare two results.json files (B - A) instead of running; with --out, also writes compare.md")
    p.add_argument("--codec", choices=CODECS, default="opus",
                   help="audio on the wire (Ogg Opus, as browsers send, or raw pcm16); --offline replays the same codec")
    p.add_argument("--clock", choices=CLOCKS, default="arrival",
                   help="where returned audio goes on the scenario's timeline: arrival (what a user hears: turnaround, "
                        "network and codec included) or audio (duplex only: output frame k at the end of input frame k, "
                        "a zero turnaround; what --offline records, so scores compare exactly)")
    offline = p.add_argument_group("offline (--offline): the duplex model in this process, no server, no real-time pacing")
    offline.add_argument("--offline", action="store_true",
                         help="feed the scenarios to the batched duplex model as fast as it steps, --rows at a time; "
                              "scores equal a server's under --clock audio (docs/eval.md)")
    offline.add_argument("--preset", default="tiny", help="duplex model preset, as `duplex serve --preset`")
    offline.add_argument("--moshi-spec", metavar="SPEC", help="duplex model instead of the preset's (repo id or directory)")
    offline.add_argument("--rows", type=int, default=16,
                         help="scenarios per batched step (the model's slots); for recordings bit-identical to a CPU "
                              "server's, --rows and its --slots both over 8 or both 8 or fewer (docs/eval.md)")
    offline.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    offline.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                         help="model dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    offline.add_argument("--threads", type=int, default=0,
                         help="torch CPU threads (0: as `duplex serve` picks them, all cores but one on CPU)")
    offline.add_argument("--codec-workers", type=int, default=0,
                         help="processes that run the Opus codecs beside the model (0: one per CPU core); pcm16 needs none")
    p.add_argument("--log-level", default="warning", help="log verbosity")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return compare(args)
    if args.out and args.fdb and not (args.url or args.score or args.offline):   # convert only
        try:
            prepare_set(args)
        except (ScenarioError, ValueError) as exc:
            print(f"duplex eval: {exc}", file=sys.stderr)
            return 2
        print(f"duplex eval: run it with --url URL --set {set_folder(args)}", file=sys.stderr)
        return 0
    if not args.out or not (args.url or args.score or args.offline):
        print("duplex eval: --url (a running server), --offline (the model in this process) or --score (recordings) "
              "and --out (a folder) are needed, or --compare A B", file=sys.stderr)
        return 2
    modes_arg = args.modes or ("duplex" if args.offline else "duplex,cascade")
    modes = [m for m in modes_arg.split(",") if m]
    if not modes or any(m not in MODES or m == "auto" for m in modes):
        print(f"duplex eval: --modes takes duplex and/or cascade, got {modes_arg!r}", file=sys.stderr)
        return 2
    if problem := offline_problem(args, modes):
        print(f"duplex eval: {problem}", file=sys.stderr)
        return 2
    try:
        scenarios = prepare_set(args)
    except (ScenarioError, ValueError, RuntimeError) as exc:
        print(f"duplex eval: {exc}", file=sys.stderr)
        return 2
    detector = make_detector(args.vad)
    results: dict[str, tp.Any] = {"meta": meta(args, scenarios, detector), "modes": {}}
    for mode in modes:
        if args.score:
            if not (args.score / mode).is_dir():
                continue
            entries = [recorded(args.score, mode, scenario, detector) for scenario, _ in scenarios]
        elif args.offline:
            played: list[Played | str]
            try:
                played, results["meta"]["offline"] = play_offline(args, [pcm for _, pcm in scenarios],
                                                                  conversation_config(args))
            except (RuntimeError, ValueError) as exc:   # StartupError, WeightsUnavailable, a bad preset: says how
                print(f"duplex eval --offline: {exc}", file=sys.stderr)
                return 2
            entries = [judge(args.out, mode, scenario, outcome, detector) for (scenario, _), outcome in zip(scenarios, played)]
        else:
            try:
                played = asyncio.run(play_all(args, mode, scenarios))
            except aiohttp.ClientConnectionError as exc:
                print(f"duplex eval: cannot reach the server at {args.url} ({exc}); start one with `duplex serve`",
                      file=sys.stderr)
                return 1
            entries = [judge(args.out, mode, scenario, outcome, detector) for (scenario, _), outcome in zip(scenarios, played)]
        results["modes"][mode] = {"aggregate": aggregate([e for e in entries if "error" not in e]),
                                  "failed": sum("error" in e for e in entries), "scenarios": entries}
    if not results["modes"]:
        print(f"duplex eval: no recordings of {', '.join(modes)} under {args.score} (expected <mode>/<id>/output.wav)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (args.out / "results.md").write_text(table + "\n")
    plot(results, args.out / "eval.png")
    print(table)
    print(f"\nwrote {args.out / 'results.json'}, results.md and eval.png", file=sys.stderr)
    failed = sum(mode["failed"] for mode in results["modes"].values())
    if failed:
        print(f"duplex eval: {failed} scenario(s) failed; see 'error' in results.json", file=sys.stderr)
        return 1
    return 0


def set_folder(args: argparse.Namespace) -> Path:
    if args.scenario_set is not None:
        return args.scenario_set
    return (args.score if args.score is not None else args.out) / "scenarios"


def prepare_set(args: argparse.Namespace) -> list[tuple[Scenario, tp.Any]]:
    if args.scenario_set is not None and args.fdb is not None:
        raise ScenarioError("give --set (a scenario folder) or --fdb (data to convert), not both")
    folder = set_folder(args)
    if args.scenario_set is not None or args.score is not None:
        return load_set(folder)
    clear_scenarios(folder)   # a set made by an earlier run into the same --out must not mix with this one
    if args.fdb is not None:
        written, skipped = convert_fdb(args.fdb, folder)
        for path, reason in skipped:
            print(f"duplex eval: skipped {path}: {reason}", file=sys.stderr)
        print(f"duplex eval: converted {len(written)} Full-Duplex-Bench samples into {folder}", file=sys.stderr)
    else:
        generate_set(folder, per_kind=args.per_kind, kinds=[k for k in args.kinds.split(",") if k], seed=args.seed)
    return load_set(folder)


def clear_scenarios(folder: Path) -> None:
    """Removes the scenario folders (<id>/scenario.json + <id>/input.wav) an earlier run wrote; nothing else."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and (path / ANNOTATIONS).exists() and {p.name for p in path.iterdir()} <= {ANNOTATIONS, INPUT_WAV}:
            shutil.rmtree(path)


async def play_all(args: argparse.Namespace, mode: str, scenarios: list[tuple[Scenario, tp.Any]]) -> list[Played | str]:
    """Every scenario in `mode`, at most --concurrency at once; a failed one gives its error text."""
    gate = asyncio.Semaphore(max(1, args.concurrency))
    bar = tqdm(total=len(scenarios), desc=f"eval {mode}", unit="scenario", file=sys.stderr)

    async def one(pcm) -> Played | str:
        async with gate:
            try:
                return await play(args.url, mode, pcm, tail_s=args.tail_s, token=args.token, config=conversation_config(args),
                                  codec=args.codec, clock=args.clock)
            except (ScenarioRunError, ServerClosed, TimeoutError) as exc:
                return str(exc)
            finally:
                bar.update(1)

    if args.warmup > 0:   # a fresh server pays one-time costs (lazy loading, first compilations) on its first turns
        shortest = min((pcm for _, pcm in scenarios), key=len)
        print(f"eval {mode}: {args.warmup} warm-up conversation(s), not scored", file=sys.stderr)
        for _ in range(args.warmup):
            try:
                await play(args.url, mode, shortest, token=args.token, config=conversation_config(args),
                           codec=args.codec)
            except (ScenarioRunError, ServerClosed, TimeoutError) as exc:
                print(f"eval {mode}: the warm-up failed ({exc}); going on", file=sys.stderr)
    tasks = [asyncio.create_task(one(pcm), name=f"eval-{mode}-{scenario.id}") for scenario, pcm in scenarios]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # on an error that ends the run (the server is unreachable), no conversation is left running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()


def conversation_config(args: argparse.Namespace) -> dict:
    """Each conversation's `start` config (and each offline row's sampling)."""
    config: dict[str, tp.Any] = {"seed": args.seed}
    if args.greedy:
        config |= {"temperature": 0.0, "text_temperature": 0.0}
    return config


def judge(out: Path, mode: str, scenario: Scenario, outcome: Played | str, detector: SpeechDetector) -> dict:
    """Saves the recording as OUT/<mode>/<id>/output.wav and scores it: one scenario's entry in results.json."""
    if isinstance(outcome, str):
        return {"id": scenario.id, "kind": scenario.kind, "error": outcome}
    folder = out / mode / scenario.id
    folder.mkdir(parents=True, exist_ok=True)
    write_wav(str(folder / "output.wav"), outcome.output)
    entry = scored(mode, scenario, outcome.output, detector)
    entry["chunks_received"] = outcome.chunks_received
    if outcome.errors:
        entry["server_errors"] = outcome.errors
    return entry


def recorded(folder: Path, mode: str, scenario: Scenario, detector: SpeechDetector) -> dict:
    """The entry of a recording made earlier (by duplex eval, or by any system, in the same layout)."""
    path = folder / mode / scenario.id / "output.wav"
    if not path.exists():
        return {"id": scenario.id, "kind": scenario.kind, "error": f"no recording at {path}"}
    return scored(mode, scenario, read_audio(path), detector)


def scored(mode: str, scenario: Scenario, recording: np.ndarray, detector: SpeechDetector) -> dict:
    segments = detector.segments(recording, SAMPLE_RATE)
    entry: dict[str, tp.Any] = {"id": scenario.id, "kind": scenario.kind}
    entry.update(score(scenario, segments, recording_end_s=recording.size / SAMPLE_RATE))
    entry["assistant_speech"] = [[round(s, 3), round(e, 3)] for s, e in segments]
    entry["output"] = str(Path(mode) / scenario.id / "output.wav")
    return entry


def meta(args: argparse.Namespace, scenarios: list, detector: SpeechDetector) -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
            "load_1m": round(os.getloadavg()[0], 2), "vad": detector.name,
            "server": args.url or ("offline, in process" if args.offline else f"recordings in {args.score}"),
            "codec": args.codec, "clock": "audio" if args.offline else args.clock,
            "set": str(set_folder(args)), "recordings": str(args.score or args.out),
            "scenarios": len(scenarios),
            "tail_s": args.tail_s, "seed": args.seed, "greedy": args.greedy, "concurrency": args.concurrency,
            "warmup": args.warmup}


def compare(args: argparse.Namespace) -> int:
    path_a, path_b = args.compare
    try:
        a, b = (json.loads(p.read_text()) for p in (path_a, path_b))
        table = compare_table(a, b, name_a=path_a.parent.name or "A", name_b=path_b.parent.name or "B")
    except (OSError, ValueError, KeyError) as exc:
        print(f"duplex eval --compare: {exc} (give two results.json files written by duplex eval)", file=sys.stderr)
        return 2
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(table + "\n")
    return 0
