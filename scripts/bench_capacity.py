#!/usr/bin/env python3
"""Realistic capacity benchmark: how many conversations are served in real time, side by side in one run.

1. bare batched: the largest N whose bare `MoshiBatch` step (N slots, all active, no sockets) has
   p99 <= 80 ms.
2. server, aligned and unaligned clients, for each transport (/ws pcm16, /ws Ogg Opus, /api/chat):
   `duplex serve --slots N` and N clients over the real protocol and codec, with speech (espeak-ng)
   at real-time pace. Aligned: every client sends frame k at the same instant. Unaligned: client
   phases spread evenly over the 80 ms frame, each client on its own clock (unrelated users).
   A load is served when p99 turnaround <= 80 ms + the bare step p99 at that batch size, no frame
   is missing, and the lag does not grow (last second's median turnaround <= first second's + 80 ms).
   Search: step N up until a load fails, then bisect once between the last pass and the first fail.
3. one-at-a-time (batch 1 stepped N times per 80 ms) and Kyutai's `moshi.server` on the same tiny
   weights (through scripts/moshi_server_cpu.py), loaded with 1 then 2 `/api/chat` clients.
4. turnaround p50/p99 at 25 %, 50 % and 100 % of the unaligned /ws Opus capacity, with the server's
   event-loop CPU per session-frame (from /health `loop_cpu_s` and `frames_in` before and after).

    python scripts/bench_capacity.py --quick --out /tmp/cap/results.json     # a few minutes
    python scripts/bench_capacity.py --out /tmp/cap/results.json             # ~5-10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import aiohttp  # noqa: E402

from duplex import stats  # noqa: E402
from duplex.audio import FRAME_MS, FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, float_to_pcm16  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

REALTIME_MS = float(FRAME_MS)
FRAMES_PER_SECOND = round(1000 / FRAME_MS)  # 12 (12.5 frames a second, rounded down)
SKIP_FRAMES = 5  # start-up frames left out of the percentiles
TRANSPORTS = ("ws_pcm16", "ws_opus", "api_chat")
SENTENCES = [
    "Hello, could you tell me what the weather will be like tomorrow morning?",
    "I would like to book a table for two people at eight o'clock tonight.",
    "That sounds good. What else can you recommend for a rainy weekend in the city?",
    "Sorry, I did not catch that. Could you say it again a little more slowly?",
]


# --- pure helpers (tested in tests/test_bench_capacity.py) ----------------------------------------
def percentiles(values: tp.Sequence[float]) -> dict:
    return {**(stats.percentiles(values, digits=2) or {}), "n": len(values)}


def growing_lag(first_second: tp.Sequence[float], last_second: tp.Sequence[float],
                frame_ms: float = REALTIME_MS) -> bool:
    """True when the last second's median turnaround exceeds the first second's by more than one frame."""
    if not first_second or not last_second:
        return True
    return float(np.median(last_second)) - float(np.median(first_second)) > frame_ms


def capacity_search(served: tp.Callable[[int], bool], step: int, limit: int) -> tuple[int, list[int]]:
    """Steps N up by `step` until `served(N)` fails (or `limit`), then bisects once between the last
    pass and the first failure. Returns (capacity, the Ns tried in order)."""
    tried: list[int] = []
    ok, n = 0, step
    while n <= limit:
        tried.append(n)
        if not served(n):
            break
        ok, n = n, n + step
    else:
        return ok, tried
    mid = (ok + n) // 2
    if ok < mid < n:
        tried.append(mid)
        if served(mid):
            ok = mid
    return ok, tried


def frame_arrivals(arrivals: list[float], samples: int, now: float) -> None:
    """Appends `now` once per output frame completed by `samples` decoded samples in all."""
    while samples >= (len(arrivals) + 1) * FRAME_SAMPLES:
        arrivals.append(now)


# --- speech and payloads ---------------------------------------------------------------------------
def speech(workdir: Path, seconds: float) -> np.ndarray:
    """espeak-ng sentences with short pauses, resampled to 24 kHz, looped to `seconds`."""
    from duplex.audio import read_wav_mono24k

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is needed for the speech (apt install espeak-ng)")
    parts = []
    for i, text in enumerate(SENTENCES):
        wav = workdir / f"sentence{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        parts += [read_wav_mono24k(str(wav)), np.zeros(SAMPLE_RATE // 2, dtype=np.float32)]
    one = np.concatenate(parts)
    return np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))) + 1)


class Payloads:
    """Every client's messages, prepared before any load: pcm16 frames, or its own Ogg Opus stream
    (one page per frame; a new connection resends the stream from its first page, headers included)."""

    def __init__(self, audio: np.ndarray, frames: int) -> None:
        self.audio = audio
        self.frames = frames
        self.cache: dict[tuple[str, int], list[bytes]] = {}

    def get(self, codec: str, client: int) -> list[bytes]:
        key = (codec, client)
        if key not in self.cache:
            start = (client * 37 * FRAME_SAMPLES) % (len(self.audio) - (self.frames + 1) * FRAME_SAMPLES)
            chunks = [self.audio[start + k * FRAME_SAMPLES: start + (k + 1) * FRAME_SAMPLES]
                      for k in range(self.frames)]
            if codec == "pcm16":
                self.cache[key] = [b"\x01" + float_to_pcm16(c) for c in chunks]
            else:
                import sphn
                writer = sphn.OpusStreamWriter(SAMPLE_RATE)
                pages = [writer.append_pcm(c) for c in chunks]
                if not all(pages):
                    raise RuntimeError("sphn's Opus writer did not give one page per frame")
                self.cache[key] = [b"\x01" + page for page in pages]
        return self.cache[key]


# --- the load generator -----------------------------------------------------------------------------
@dataclass
class ClientResult:
    sent: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ready: bool = False
    error: str | None = None


async def run_client(session: aiohttp.ClientSession, base_url: str, transport: str, payloads: list[bytes],
                     start: asyncio.Future, phase: float, ready_timeout: float, ready: asyncio.Event,
                     result: ClientResult, output_offset: int = 0) -> None:
    """One conversation: handshake, then frame k sent at start + phase + k * 80 ms; output frames counted
    by decoded samples. JSON events are not parsed beyond the start handshake."""
    ws_url = base_url.replace("http", "ws", 1)
    url = {"ws_pcm16": "/ws?codec=pcm16&mode=duplex", "ws_opus": "/ws?codec=opus&mode=duplex",
           "api_chat": "/api/chat?text_temperature=0&audio_temperature=0"}[transport]
    frames = len(payloads) - output_offset
    reader = None
    if transport != "ws_pcm16":
        import sphn
        reader = sphn.OpusStreamReader(SAMPLE_RATE)
    done = asyncio.get_running_loop().create_future()
    try:
        async with session.ws_connect(ws_url + url, max_msg_size=0) as ws:
            async def handshake() -> None:
                if transport == "api_chat":
                    while True:
                        message = await ws.receive()
                        if message.type == aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x00":
                            return
                        if message.type != aiohttp.WSMsgType.BINARY:
                            raise RuntimeError(f"no handshake: {message.type}")
                await ws.receive_str()  # ready
                await ws.send_str(json.dumps({"type": "start", "mode": "duplex",
                                              "config": {"temperature": 0, "text_temperature": 0}}))
                while True:
                    answer = await ws.receive_str()
                    if '"error"' in answer:
                        raise RuntimeError(f"start refused: {answer}")
                    if '"status"' in answer:
                        return
            try:
                await asyncio.wait_for(handshake(), ready_timeout)
            except asyncio.TimeoutError:
                result.error = "not ready in time (a server that serves one conversation at a time?)"
                ready.set()
                return
            result.ready = True
            ready.set()

            async def receive() -> None:
                samples = 0
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.BINARY or message.data[:1] != b"\x01":
                        continue
                    now = time.monotonic()
                    if reader is None:
                        samples += (len(message.data) - 1) // 2
                    else:
                        samples += reader.append_bytes(message.data[1:]).shape[-1]
                    frame_arrivals(result.arrivals, samples, now)
                    if len(result.arrivals) >= frames:
                        done.set_result(None)
                        return

            receiver = asyncio.create_task(receive())
            t0 = await start + phase
            for k, payload in enumerate(payloads):
                delay = t0 + k * FRAME_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                result.sent.append(time.monotonic())
                await ws.send_bytes(payload)
            try:
                await asyncio.wait_for(asyncio.shield(done), timeout=3.0)
            except asyncio.TimeoutError:
                result.error = f"{frames - len(result.arrivals)} output frames missing"
            receiver.cancel()
    except Exception as exc:  # noqa: BLE001 -- reported in the results, not fatal to the run
        result.error = result.error or f"{type(exc).__name__}: {exc}"
        ready.set()


async def _health(session: aiohttp.ClientSession, base_url: str) -> dict:
    try:
        async with session.get(base_url + "/health") as response:
            return await response.json()
    except (aiohttp.ClientError, ValueError):
        return {}


def run_load(base_url: str | list[str], transport: str, clients: int, payloads: Payloads, aligned: bool,
             ready_timeout: float = 20.0, health: bool = True, output_offset: int = 0) -> dict:
    """`clients` conversations at real-time pace; turnarounds, lag check, server and client CPU.

    Several base URLs (scripts/bench_fleet.py: workers addressed directly): client i uses URL i mod their
    number, and the server CPU figures are left out (`health` is for one server).

    Output frame k answers input frame k + `output_offset` (0 for duplex; 1 for moshi.server, which
    drops the first input frame: its recv_loop's `skip_frames`)."""
    urls = [base_url] if isinstance(base_url, str) else base_url
    health = health and len(urls) == 1

    async def run() -> tuple[list[ClientResult], dict, dict, float]:
        codec = "pcm16" if transport == "ws_pcm16" else "opus"
        results = [ClientResult() for _ in range(clients)]
        loop = asyncio.get_running_loop()
        start: asyncio.Future = loop.create_future()
        readies = [asyncio.Event() for _ in range(clients)]
        phases = [0.0 if aligned else i * FRAME_S / clients for i in range(clients)]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(run_client(session, urls[i % len(urls)], transport, payloads.get(codec, i), start,
                                                    phases[i], ready_timeout, readies[i], results[i],
                                                    output_offset))
                     for i in range(clients)]
            await asyncio.gather(*(r.wait() for r in readies))
            before = await _health(session, urls[0]) if health else {}
            cpu0 = time.process_time()
            start.set_result(time.monotonic() + 0.2)
            await asyncio.gather(*tasks)
            client_cpu = time.process_time() - cpu0
            after = await _health(session, urls[0]) if health else {}
        return results, before, after, client_cpu

    results, before, after, client_cpu = asyncio.run(run())
    turnarounds, first, last, errors = [], [], [], []
    by_url: dict[str, list[float]] = {}   # several URLs: each one's turnarounds (scripts/bench_fleet.py)
    for i, r in enumerate(results):
        if r.error:
            errors.append(r.error)
        sent = r.sent[output_offset:]
        n = min(len(sent), len(r.arrivals))
        times = [(r.arrivals[k] - sent[k]) * 1000.0 for k in range(n)]
        turnarounds += times[SKIP_FRAMES:]
        by_url.setdefault(urls[i % len(urls)], []).extend(times[SKIP_FRAMES:])
        first += times[SKIP_FRAMES:SKIP_FRAMES + FRAMES_PER_SECOND]
        if n == len(sent) and n >= SKIP_FRAMES + 2 * FRAMES_PER_SECOND:
            last += times[-FRAMES_PER_SECOND:]
    out: dict = {"transport": transport, "clients": clients, "aligned": aligned,
                 "turnaround_ms": percentiles(turnarounds),
                 "first_second_median_ms": round(float(np.median(first)), 2) if first else None,
                 "last_second_median_ms": round(float(np.median(last)), 2) if last else None,
                 "growing_lag": growing_lag(first, last), "clients_served_frames": sum(not r.error for r in results),
                 "errors": sorted(set(errors))[:3], "load_generator_cpu_s": round(client_cpu, 3)}
    if len(urls) > 1:
        out["turnarounds_by_url_ms"] = by_url
    frames = after.get("frames_in", 0) - before.get("frames_in", 0)
    if frames > 0:
        out["session_frames"] = frames
        out["loop_cpu_ms_per_frame"] = round((after["loop_cpu_s"] - before["loop_cpu_s"]) * 1000 / frames, 4)
        out["process_cpu_ms_per_frame"] = round((after["process_cpu_s"] - before["process_cpu_s"]) * 1000 / frames, 4)
        model0 = sum(before.get("model_threads_cpu_s", {}).values())
        model1 = sum(after.get("model_threads_cpu_s", {}).values())
        out["model_thread_cpu_ms_per_frame"] = round((model1 - model0) * 1000 / frames, 4)
    return out


def load_served(load: dict, bare_p99_ms: float) -> bool:
    p99 = load["turnaround_ms"].get("p99")
    return (not load["errors"] and p99 is not None and p99 <= REALTIME_MS + bare_p99_ms
            and not load["growing_lag"])


def describe(load: dict, served: bool | None = None) -> str:
    t = load["turnaround_ms"]
    mark = "" if served is None else ("  served" if served else "  NOT served")
    cpu = f"  loop {load['loop_cpu_ms_per_frame']:.3f} ms/frame" if "loop_cpu_ms_per_frame" in load else ""
    err = f"  ({load['errors'][0]})" if load["errors"] else ""
    return (f"{load['transport']:9s} {'aligned' if load['aligned'] else 'unaligned':9s} N={load['clients']:3d}: "
            f"p50 {t.get('p50', float('nan')):7.1f}  p99 {t.get('p99', float('nan')):7.1f} ms  "
            f"lag {load['first_second_median_ms']} -> {load['last_second_median_ms']}{cpu}{mark}{err}")


# --- bare loops ---------------------------------------------------------------------------------------
class BareSteps:
    """Bare MoshiBatch step p99 per batch size (all slots active), measured once per size, in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rows: dict[int, dict] = {}

    def p99(self, n: int) -> float:
        from bench_duplex import load_model, step_times

        if n not in self.rows:
            model = load_model(self.args, n)
            self.rows[n] = percentiles(step_times(model, n, self.args.bare_steps))
            del model
            print(f"  bare batched      N={n:3d}: step p50 {self.rows[n]['p50']:6.1f}  p99 {self.rows[n]['p99']:6.1f} ms",
                  flush=True)
        return self.rows[n]["p99"]


def one_at_a_time(args: argparse.Namespace) -> tuple[int, list[dict]]:
    from bench_duplex import load_model, step_times

    single = load_model(args, 1)
    rows, capacity = [], 0
    for n in range(1, args.max_n + 1):
        tick = percentiles(step_times(single, 1, args.bare_steps // 2, repeat_per_tick=n))
        rows.append({"conversations": n, "tick_ms": tick})
        print(f"  one-at-a-time     N={n:3d}: tick p50 {tick['p50']:6.1f}  p99 {tick['p99']:6.1f} ms", flush=True)
        if tick["p99"] > REALTIME_MS:
            break
        capacity = n
    return capacity, rows


# --- servers ------------------------------------------------------------------------------------------
def start_duplex(args: argparse.Namespace, slots: int) -> ServerProcess:
    model = ["--moshi-spec", args.moshi_spec] if args.moshi_spec else ["--preset", args.preset]
    return ServerProcess("--slots", str(slots), "--device", args.device, "--dtype", args.dtype,
                         "--threads", str(args.threads), "--no-cascade", *model)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moshi_server_loads(args: argparse.Namespace, payloads: Payloads, one_p99: float, log_path: Path) -> dict:
    """Kyutai's moshi.server on the same weights; 1 then 2 /api/chat clients (unaligned)."""
    from duplex.models.spec import PRESETS, resolve_checkpoint

    spec = args.moshi_spec or PRESETS[args.preset].duplex_spec
    checkpoint = resolve_checkpoint(spec)
    directory = Path(checkpoint.moshi_weights).parent
    port = free_port()
    threads = args.threads if args.threads > 0 else max(1, (os.cpu_count() or 2) - 1)
    cmd = [sys.executable, str(REPO / "scripts" / "moshi_server_cpu.py"), "--local", str(directory),
           "--threads", str(threads), *(["--float32"] if args.dtype in ("auto", "float32") else []), "--",
           "--device", "cpu" if args.device in ("auto", "cpu") else args.device, "--host", "127.0.0.1",
           "--port", str(port), "--static", "none"]
    out: dict = {"command": " ".join(cmd[1:]), "loads": []}
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            out["error"] = f"moshi.server did not start (see {log_path})"
            return out
        capacity = 0
        for clients in (1, 2):
            load = run_load(f"http://127.0.0.1:{port}", "api_chat", clients, payloads, aligned=False,
                            ready_timeout=5.0, health=False, output_offset=1)
            served = load_served(load, one_p99)
            print("  moshi.server " + describe(load, served), flush=True)
            out["loads"].append({**load, "served": served})
            if not served:
                break
            capacity = clients
        out["capacity"] = capacity
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    return out


def server_capacities(args: argparse.Namespace, payloads: Payloads, bare: BareSteps, limit: int) -> dict:
    """Every (transport, alignment) search on one ladder of N, one server per N (`--slots N`)."""
    searches = [(t, a) for t in args.transports for a in (True, False)]
    state = {key: {"ok": 0, "fail": None, "loads": []} for key in searches}

    def measure(n: int, keys: list[tuple[str, bool]]) -> None:
        bare_p99 = bare.p99(n)
        server = start_duplex(args, n)
        try:
            for transport, aligned in keys:
                load = run_load(server.http_url, transport, n, payloads, aligned)
                served = load_served(load, bare_p99)
                print("  server " + describe(load, served), flush=True)
                entry = state[(transport, aligned)]
                entry["loads"].append({**load, "served": served, "bare_p99_ms": bare_p99})
                if served:
                    entry["ok"] = max(entry["ok"], n)
                elif entry["fail"] is None or n < entry["fail"]:
                    entry["fail"] = n
        finally:
            server.stop()

    n = args.step
    while n <= limit:
        open_keys = [key for key in searches if state[key]["fail"] is None]
        if not open_keys:
            break
        measure(n, open_keys)
        n += args.step
    mids: dict[int, list] = {}
    for key in searches:  # bisect once
        ok, fail = state[key]["ok"], state[key]["fail"]
        if fail is not None and ok < (ok + fail) // 2 < fail:
            mids.setdefault((ok + fail) // 2, []).append(key)
    for mid, keys in sorted(mids.items()):
        measure(mid, keys)
    return {f"{t}_{'aligned' if a else 'unaligned'}": {"capacity": state[(t, a)]["ok"], "loads": state[(t, a)]["loads"],
                                                       "search_limit_reached": state[(t, a)]["fail"] is None}
            for t, a in searches}


def fractions(args: argparse.Namespace, payloads: Payloads, capacity: int) -> list[dict]:
    """Unaligned /ws Opus at 25/50/100 % of its capacity, one server sized at that capacity."""
    rows: list[dict] = []
    if capacity < 1:
        return rows
    server = start_duplex(args, capacity)
    try:
        for share in (0.25, 0.5, 1.0):
            n = max(1, round(capacity * share))
            load = run_load(server.http_url, "ws_opus", n, payloads, aligned=False)
            print(f"  {int(share * 100):3d} %  " + describe(load), flush=True)
            rows.append({"share": share, **load})
    finally:
        server.stop()
    return rows


# --- main ----------------------------------------------------------------------------------------------
def main() -> int:
    from bench_duplex import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="short loads, coarse steps (development)")
    parser.add_argument("--seconds", type=float, help="seconds of audio per load (default 6, quick 3)")
    parser.add_argument("--step", type=int, help="capacity search step (default 8, quick 16)")
    parser.add_argument("--bare-steps", type=int, help="steps per bare measurement (default 100, quick 40)")
    parser.add_argument("--max-n", type=int, default=256, help="upper bound of every search")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated subset of " +
                        ", ".join(TRANSPORTS))
    parser.add_argument("--no-moshi-server", action="store_true", help="skip Kyutai's moshi.server")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (e.g. DIR/results.json)")
    args = parser.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 6.0)
    args.step = args.step or (16 if args.quick else 8)
    args.bare_steps = args.bare_steps or (40 if args.quick else 100)
    args.transports = [t for t in args.transports.split(",") if t]
    if unknown := set(args.transports) - set(TRANSPORTS):
        parser.error(f"unknown transports: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    print(f"capacity benchmark on {platform.node()} ({os.cpu_count()} CPUs), {args.moshi_spec or args.preset}, "
          f"device {args.device}, {args.seconds:g} s per load", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    frames = int(args.seconds / FRAME_S)
    payloads = Payloads(speech(workdir, args.seconds * 2 + 60), frames)
    results: dict = {"machine": {"node": platform.node(), "cpus": os.cpu_count()},
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}

    print("1. bare batched step (N slots, all active)", flush=True)
    bare = BareSteps(args)
    bare_capacity, _ = capacity_search(lambda n: bare.p99(n) <= REALTIME_MS, args.step, args.max_n)

    print("3. one-at-a-time (batch 1, N steps per 80 ms)", flush=True)
    serial_capacity, serial_rows = one_at_a_time(args)
    one_p99 = serial_rows[0]["tick_ms"]["p99"]

    print("2. server capacity, aligned and unaligned clients", flush=True)
    servers = server_capacities(args, payloads, bare, limit=min(args.max_n, 2 * bare_capacity + args.step))

    moshi: dict = {"skipped": True}
    if not args.no_moshi_server:
        print("3. Kyutai's moshi.server, same weights, /api/chat clients", flush=True)
        moshi = moshi_server_loads(args, payloads, one_p99, workdir / "moshi_server.log")

    shares: list[dict] = []
    if "ws_opus" in args.transports:
        print("4. /ws Opus, unaligned, at 25/50/100 % of its capacity", flush=True)
        shares = fractions(args, payloads, servers["ws_opus_unaligned"]["capacity"])

    results.update({
        "bare_batched": {"capacity": bare_capacity, "steps_ms": {str(n): row for n, row in sorted(bare.rows.items())}},
        "one_at_a_time": {"capacity": serial_capacity, "rows": serial_rows},
        "server": servers, "moshi_server": moshi, "ws_opus_unaligned_shares": shares,
        "runtime_s": round(time.monotonic() - started, 1)})
    print()
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nwritten: {args.out}")
    return 0


def table(results: dict) -> str:
    rows = ["| figure | value |", "|---|---|"]
    bare = results["bare_batched"]
    p99 = bare["steps_ms"].get(str(bare["capacity"]), {}).get("p99")
    rows.append(f"| bare batched capacity (step p99 <= 80 ms) | **{bare['capacity']}** (step p99 {p99} ms) |")
    for name, entry in results["server"].items():
        transport, alignment = name.rsplit("_", 1)
        at_least = ">= " if entry["search_limit_reached"] else ""
        rows.append(f"| server capacity, {transport.replace('_', ' ')}, {alignment} clients | "
                    f"**{at_least}{entry['capacity']}** |")
    rows.append(f"| one-at-a-time capacity (batch 1, N steps per 80 ms) | {results['one_at_a_time']['capacity']} |")
    moshi = results["moshi_server"]
    if "capacity" in moshi:
        loads = ", ".join(f"{ld['clients']} client(s): {'served' if ld['served'] else 'not served'}"
                          + (f" ({ld['errors'][0]})" if ld["errors"] else "") for ld in moshi["loads"])
        rows.append(f"| Kyutai moshi.server capacity (/api/chat) | {moshi['capacity']} ({loads}) |")
    elif not moshi.get("skipped"):
        rows.append(f"| Kyutai moshi.server | {moshi.get('error')} |")
    for row in results["ws_opus_unaligned_shares"]:
        t = row["turnaround_ms"]
        cpu = row.get("loop_cpu_ms_per_frame")
        rows.append(f"| /ws Opus unaligned, {int(row['share'] * 100)} % of capacity ({row['clients']} clients): "
                    f"turnaround p50 / p99; event-loop CPU per session-frame | {t.get('p50')} / {t.get('p99')} ms; "
                    f"{cpu} ms |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
