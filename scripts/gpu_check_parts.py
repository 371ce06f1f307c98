"""The measurements of scripts/gpu_check.py (one function per table) and its Markdown writer."""

from __future__ import annotations

import contextlib
import gc
import time
import typing as tp

import numpy as np
import torch

from duplex import stats
from duplex.audio import FRAME_SAMPLES

GB = 1e9


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _dtype(args: tp.Any) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _memory(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    return {"allocated_gb": round(torch.cuda.memory_allocated() / GB, 2),
            "peak_gb": round(torch.cuda.max_memory_allocated() / GB, 2)}


def _percentiles(times: list[float]) -> dict:
    p = stats.percentiles(times, digits=2) or {}
    return {"p50_ms": p.get("p50"), "p99_ms": p.get("p99"), "mean_ms": round(float(np.mean(times)), 2) if times else None}


def _graphs(device: str) -> list[str]:
    return ["off", "on"] if device.startswith("cuda") else ["n/a"]


@contextlib.contextmanager
def _graph_mode(mode: str) -> tp.Iterator[None]:
    from moshi.utils.compile import no_cuda_graph

    with (no_cuda_graph() if mode == "off" else contextlib.nullcontext()):
        yield


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# --- the batched step -----------------------------------------------------------------------------
def step_sweep(report: tp.Any, part: str, spec: str, sizes: list[int], args: tp.Any, fit_ms: float) -> int | None:
    """Moshi (or PersonaPlex) at each B: build, warm up and time `args.steps` full-batch steps per graph
    mode; returns the largest B whose p99 (graphs on where there are graphs) is within `fit_ms`."""
    from duplex.models.host_syncs import HostSyncCounter
    from duplex.models.moshi_batch import MoshiBatch, StepInput
    from duplex.models.real_size import parameters
    from duplex.models.spec import resolve_checkpoint

    checkpoint = resolve_checkpoint(spec)
    fits: int | None = None
    for slots in sizes:
        release_memory()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            model = MoshiBatch(checkpoint, slots, args.device, _dtype(args))
        except Exception as exc:
            if not _is_oom(exc):
                raise
            report.row(part, "steps", {"B": slots, "error": "out of memory building the model"})
            break
        _sync(args.device)
        build_s = time.perf_counter() - started
        weights = sum(p.numel() * p.element_size() for p in model.lm.parameters()) / GB
        built = _memory(args.device).get("allocated_gb")
        ones, none = np.ones(slots, dtype=bool), np.zeros(slots, dtype=bool)
        rng = np.random.default_rng(0)
        try:
            for mode in _graphs(args.device):
                with _graph_mode(mode):
                    started = time.perf_counter()
                    model.warmup()
                    _sync(args.device)
                    warmup_s = time.perf_counter() - started
                    times = []
                    for _ in range(args.steps):
                        pcm = (rng.standard_normal((slots, FRAME_SAMPLES)) * 0.05).astype(np.float32)
                        t0 = time.perf_counter()
                        model.step(StepInput(pcm, ones, none, none, none))
                        _sync(args.device)
                        times.append((time.perf_counter() - t0) * 1000.0)
                    with HostSyncCounter() as counter:
                        model.step(StepInput(pcm, ones, none, none, none))
                mem = _memory(args.device)
                row = {"B": slots, "graphs": mode, **_percentiles(times), "build_s": round(build_s, 1),
                       "warmup_s": round(warmup_s, 1), "weights_gb": round(weights, 2),
                       "lm_params_b": round(parameters(model.lm) / GB, 3),
                       "host_syncs_per_tick": counter.count, **mem}
                if mem and built is not None:
                    row["per_slot_gb"] = round((mem["peak_gb"] - weights) / slots, 3)
                report.row(part, "steps", row)
                if mode != "off" or len(_graphs(args.device)) == 1:
                    if row["p99_ms"] is not None and row["p99_ms"] <= fit_ms:
                        fits = slots
                        report.part(part)["summary"]["largest_B_within_%.0f_ms" % fit_ms] = slots
                        report.write()
        except Exception as exc:
            if not _is_oom(exc):
                raise
            report.row(part, "steps", {"B": slots, "error": "out of memory stepping"})
            break
        finally:
            del model
    return fits


# --- the server -------------------------------------------------------------------------------------
def server_loads(report: tp.Any, spec: str, slots: int, args: tp.Any) -> None:
    """`duplex serve` at `slots`, unaligned Opus clients at 25/50/100 % of them (bench_capacity's load)."""
    import bench_capacity as bench

    from duplex.models.tiny.personaplex import synthetic_voice
    from duplex.server.process import ServerProcess

    frames = int(args.server_seconds * 1000 / 80)
    audio = np.concatenate([synthetic_voice(110.0 + 20 * i, 3.0, i) for i in range(4)]).astype(np.float32)
    payloads = bench.Payloads(np.tile(audio, 1 + (frames + 60) * FRAME_SAMPLES // len(audio)), frames)
    report.part("server")["summary"]["slots"] = slots
    started = time.perf_counter()
    with ServerProcess("--moshi-spec", spec, "--slots", str(slots), "--device", args.device, "--dtype", args.dtype,
                       "--no-cascade", "--max-connections", str(4 * slots + 8), timeout=300.0) as server:
        report.part("server")["summary"]["start_s"] = round(time.perf_counter() - started, 1)
        for share in (0.25, 0.5, 1.0):
            clients = max(1, round(slots * share))
            load = bench.run_load(server.http_url, "ws_opus", clients, payloads, aligned=False, ready_timeout=60.0)
            t = load["turnaround_ms"]
            loop_ms = load.get("loop_cpu_ms_per_frame")
            report.row("server", "loads", {
                "share": share, "clients": clients, "p50_ms": t.get("p50"), "p99_ms": t.get("p99"),
                "loop_cpu_ms_per_frame": loop_ms, "process_cpu_ms_per_frame": load.get("process_cpu_ms_per_frame"),
                "model_thread_cpu_ms_per_frame": load.get("model_thread_cpu_ms_per_frame"),
                # the event loop's share of one core at this load: 1.0 means the front end binds
                "loop_core_share": round(loop_ms * clients / 80.0, 3) if loop_ms is not None else None,
                "growing_lag": load["growing_lag"], "errors": "; ".join(load["errors"])})


# --- persona prefill ------------------------------------------------------------------------------
def persona_prefill(report: tp.Any, spec: str, slots: int, args: tp.Any) -> None:
    """A voice (10 s; tiny: 2 s) + ~50-token role prefilled into slot 0, parallel then cached, while the other slots tick."""
    from duplex.models.moshi_batch import MoshiBatch, StepInput
    from duplex.models.persona import build_prompt, wrap_system_tags
    from duplex.models.spec import resolve_checkpoint
    from duplex.models.tiny.personaplex import synthetic_voice

    model = MoshiBatch(resolve_checkpoint(spec), max(2, slots), args.device, _dtype(args))
    model.warmup()
    voice = synthetic_voice(140.0, args.voice_seconds, 7).astype(np.float32)
    voice = voice[: len(voice) // FRAME_SAMPLES * FRAME_SAMPLES]
    codes = model.encode_voice(voice)
    role = " ".join(["You are a friendly assistant who answers questions about the weather briefly."] * 4)
    tokens = model.tokenizer.encode(wrap_system_tags(role))[:50]
    prompt = build_prompt(codes, tokens, "synthetic", None)
    execute = np.ones(model.slots, dtype=bool)
    execute[0] = False
    none = np.zeros(model.slots, dtype=bool)
    pcm = np.zeros((model.slots, FRAME_SAMPLES), dtype=np.float32)
    # the first run misses the (empty) cache, computes the prompt in parallel and keeps it; the second hits
    for way in ("parallel", "cached"):
        job = model.begin_prefill(0, prompt, use_cache=True)
        ticks, chunks, done = [], 0, False
        started = time.perf_counter()
        while not done:
            t0 = time.perf_counter()
            done = model.run_prefill(job, 0.02)      # one chunk between ticks, as the engine does
            chunks += 1
            model.step(StepInput(pcm, execute, none, none, none))
            _sync(args.device)
            ticks.append((time.perf_counter() - t0) * 1000.0)
        report.row("persona", "prefill", {"way": way, "prompt_frames": prompt.frames, "role_tokens": len(tokens),
                                          "B": model.slots, "seconds": round(time.perf_counter() - started, 3),
                                          "chunks": chunks, **{f"neighbour_tick_{k}": v for k, v in _percentiles(ticks).items()}})


# --- the cascade's models -----------------------------------------------------------------------------
def stt_sweep(report: tp.Any, spec: str, sizes: list[int], args: tp.Any) -> None:
    from duplex.models.spec import resolve_checkpoint
    from duplex.models.stt import SttBatch, SttStepInput

    checkpoint = resolve_checkpoint(spec)
    for slots in sizes:
        release_memory()
        stt = SttBatch(checkpoint, slots, args.device, _dtype(args))
        stt.warmup()
        ones, none = np.ones(slots, dtype=bool), np.zeros(slots, dtype=bool)
        pcm = np.zeros((slots, FRAME_SAMPLES), dtype=np.float32)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            stt.step(SttStepInput(pcm, ones, none))
            _sync(args.device)
            times.append((time.perf_counter() - t0) * 1000.0)
        report.row("cascade", "stt", {"B": slots, **_percentiles(times), **_memory(args.device)})
        del stt


def llm_sweep(report: tp.Any, spec: str, sizes: list[int], args: tp.Any) -> None:
    """The preset LLM's architecture with random weights: one batched decode step (KV cache of a 64-token prompt)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from duplex.models.real_size import SMOLLM2_360M

    config = dict(SMOLLM2_360M) if spec != "tiny" else dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)
    with torch.device(args.device):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(_dtype(args)).eval()
    for slots in sizes:
        ids = torch.randint(0, config["vocab_size"], (slots, 64), device=args.device)
        times = []
        with torch.no_grad():
            out = model(ids, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(args.steps):
                t0 = time.perf_counter()
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                _sync(args.device)
                times.append((time.perf_counter() - t0) * 1000.0)
        params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        report.row("cascade", "llm_decode", {"B": slots, "params_m": params_m, **_percentiles(times)})


# --- Markdown ---------------------------------------------------------------------------------------
def markdown(data: dict) -> str:
    env = data["env"]
    lines = ["# GPU check", "", " | ".join(f"{k}: {v}" for k, v in env.items() if v is not None), ""]
    for name, part in data["parts"].items():
        took = f" ({part.get('seconds')} s of {part.get('budget_s'):.0f})" if "seconds" in part else ""
        lines += [f"## {name}: {part['status']}{took}", ""]
        if part.get("error"):
            lines += [f"error: `{part['error']}`", ""]
        for key, value in part.get("summary", {}).items():
            lines.append(f"- {key}: {value}")
        for table, rows in part.get("tables", {}).items():
            columns = list(dict.fromkeys(k for row in rows for k in row))
            lines += ["", f"**{table}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)
