#!/usr/bin/env python3
"""The whole GPU check in one command: every figure the CUDA path needs, with random weights of the real
sizes built on the device (`random:` specs, duplex/models/real_size.py), into Markdown and JSON tables.

Parts, each under its own time budget (`--budget part=seconds`); the tables are rewritten after every
measurement, so a part that fails or runs out of time leaves what it had and the next part still runs:

  moshi    the batched step (Mimi encode + LMGen step + Mimi decode) at each B of --sizes, CUDA graphs on and
           off: p50/p99 ms, build/warm-up/capture time, GPU memory in total and per slot, host syncs per tick;
           the largest B whose p99 fits the 80 ms frame with 15 % to spare
  server   `duplex serve` on that model at that B: unaligned Opus clients at 25/50/100 % of it (as
           scripts/bench_capacity.py), turnaround p50/p99, event-loop CPU per session-frame: which binds first
  persona  PersonaPlex (dep_q 16): the same sweep, and a persona prefill (10 s voice + ~50 role tokens),
           parallel vs cached, with the neighbours' tick time while it runs
  cascade  the STT's batched step vs slots (Kyutai STT 1B's architecture) and the LLM's batched decode step
           (the preset LLM's architecture, SmolLM2 360M)

    python scripts/gpu_check.py --out out/gpu                                  # CUDA, real sizes (~8 min)
    python scripts/gpu_check.py --out /tmp/g --device cpu --preset tiny        # CI: tiny presets, one size (~40 s on a quiet CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import signal
import subprocess
import sys
import time
import traceback
import typing as tp
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check_parts as parts  # noqa: E402

FRAME_MS = 80.0
HEADROOM = 0.85          # a step must fit 85 % of the frame
REAL = {"moshi": "random:moshi7b", "persona": "random:personaplex7b", "stt": "random:stt1b", "llm": "smollm2-360m"}
TINY = {"moshi": "tiny:moshi", "persona": "tiny:personaplex", "stt": "tiny:stt", "llm": "tiny"}
DEFAULT_BUDGETS = {"moshi": 180.0, "server": 110.0, "persona": 120.0, "cascade": 50.0}   # 460 s in all
PART_ORDER = ("moshi", "server", "persona", "cascade")


class PartTimeout(Exception):
    pass


def environment(device: str, dtype: str) -> dict:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "device": device, "dtype": dtype, "cpu_cores": _cores()}
    try:
        import moshi
        env["moshi"] = getattr(moshi, "__version__", "?")
    except ImportError:
        env["moshi"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 1),
                   multiprocessors=props.multi_processor_count, driver=_driver())
    else:
        env.update(gpu=None, driver=None, cpu=platform.processor() or platform.machine())
    return env


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


class Report:
    """results.json + results.md in --out, rewritten after every row."""

    def __init__(self, out: Path, env: dict, args: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"env": env, "args": args, "parts": {}}

    def part(self, name: str) -> dict:
        return self.data["parts"].setdefault(name, {"status": "running", "tables": {}, "summary": {}})

    def row(self, part: str, table: str, row: dict) -> None:
        self.part(part)["tables"].setdefault(table, []).append(row)
        self.write()

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "results.md").write_text(parts.markdown(self.data))


def run_part(report: Report, name: str, budget_s: float, work: tp.Callable[[], None]) -> None:
    """Runs one part under its budget; its status, time and error (if any) go into the report."""
    entry = report.part(name)
    entry["budget_s"] = budget_s

    def expire(signum: int, frame: tp.Any) -> None:
        raise PartTimeout(f"out of its {budget_s:g} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    started = time.monotonic()
    try:
        work()
        entry["status"] = "ok"
    except PartTimeout as exc:
        entry.update(status="timeout", error=str(exc))
    except Exception as exc:   # noqa: BLE001 - any failure is a figure too; the next part runs
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        entry["seconds"] = round(time.monotonic() - started, 1)
        parts.release_memory()
        report.write()
    print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s"
          + (f" ({entry.get('error')})" if entry.get("error") else ""), flush=True)


def preload() -> None:
    """Imports what the parts import lazily, before any budget runs: a budget's alarm inside an import leaves
    a half-initialised module behind (seen: torch's lazy sympy import), which would fail every later part."""
    import importlib

    for name in ("sympy", "torch._dynamo", "moshi.models.lm", "moshi.models.loaders", "duplex.models.moshi_batch",
                 "duplex.models.stt", "duplex.models.persona", "duplex.models.host_syncs", "duplex.models.real_size",
                 "duplex.server.process", "transformers", "bench_capacity"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    with contextlib.suppress(ImportError):
        from transformers import LlamaConfig, LlamaForCausalLM  # noqa: F401


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: bf16 on CUDA")
    p.add_argument("--preset", default="real", choices=["real", "tiny"],
                   help="real: random weights of the real sizes (random:moshi7b, ...); tiny: the tiny presets")
    p.add_argument("--sizes", default=None, help="batch sizes B (default 1,8,16,32,48,64; tiny: 2)")
    p.add_argument("--persona-sizes", default=None, help="PersonaPlex's B (default 1,16,32,48; tiny: 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per size (default 60; tiny: 4)")
    p.add_argument("--parts", default=",".join(PART_ORDER), help="which parts, in order")
    p.add_argument("--budget", action="append", default=[], metavar="PART=S", help="a part's time budget (s)")
    p.add_argument("--server-slots", type=int, default=None,
                   help="the server part's B (default: the moshi part's largest fitting B)")
    p.add_argument("--server-seconds", type=float, default=None, help="each load's length (default 8; tiny: 2.5)")
    args = p.parse_args(argv)
    tiny = args.preset == "tiny"
    args.sizes = [int(s) for s in (args.sizes or ("2" if tiny else "1,8,16,32,48,64")).split(",")]
    args.persona_sizes = [int(s) for s in (args.persona_sizes or ("2" if tiny else "1,16,32,48")).split(",")]
    args.steps = args.steps or (3 if tiny else 60)
    args.server_seconds = args.server_seconds or (2.0 if tiny else 8.0)
    args.voice_seconds = 2.0 if tiny else 10.0
    args.budgets = dict(DEFAULT_BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        args.budgets[name] = float(seconds)
    args.specs = TINY if tiny else REAL
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from duplex.server.loading import pick_device

    args.device = pick_device(args.device)
    args.dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device.startswith("cuda") else "float32")
    report = Report(args.out, environment(args.device, args.dtype),
                    {k: v for k, v in vars(args).items() if k not in ("out", "budget")})
    fit_ms = FRAME_MS * HEADROOM
    preload()
    state: dict = {}

    def moshi() -> None:
        state["fits"] = parts.step_sweep(report, "moshi", args.specs["moshi"], args.sizes, args, fit_ms)

    def server() -> None:
        slots = args.server_slots or state.get("fits") or max(args.sizes)
        parts.server_loads(report, args.specs["moshi"], slots, args)

    def persona() -> None:
        parts.step_sweep(report, "persona", args.specs["persona"], args.persona_sizes, args, fit_ms)
        parts.persona_prefill(report, args.specs["persona"], min(8, max(args.persona_sizes)), args)

    def cascade() -> None:
        parts.stt_sweep(report, args.specs["stt"], args.sizes, args)
        parts.llm_sweep(report, args.specs["llm"], args.sizes, args)

    work = {"moshi": moshi, "server": server, "persona": persona, "cascade": cascade}
    for name in args.parts.split(","):
        run_part(report, name, args.budgets.get(name, 120.0), work[name])
    print(f"[gpu_check] tables: {args.out / 'results.md'} and results.json", flush=True)
    return 0 if all(p["status"] == "ok" for p in report.data["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
