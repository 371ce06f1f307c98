"""`duplex eval --offline` for the command: the flags' checks, the model and codec workers set up, the run
timed and shown (a progress bar per scenario), each scenario's recording as a `Played`."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from ..audio import FRAME_S, SAMPLE_RATE
from ..client import split_frames
from .offline import InlineExecutor, run_offline
from .runner import Played


def offline_problem(args: argparse.Namespace, modes: list[str]) -> str | None:
    """What is wrong with the flags for the run asked (None: nothing)."""
    if args.clock == "audio" and "cascade" in modes:
        return "--clock audio is for the duplex mode (the cascade speaks when it has decided to, not frame by frame)"
    if not args.offline:
        return None
    if args.url or args.score:
        return "--offline runs the model in this process: give it without --url or --score"
    if modes != ["duplex"]:
        return ("--offline runs duplex models only (--modes duplex): the cascade's timing is its STT, LLM and TTS "
                "running against the clock; evaluate it against a server (--url)")
    if args.rows < 1 or args.codec_workers < 0:
        return "--rows takes 1 or more, --codec-workers 0 or more"
    return None


def play_offline(args: argparse.Namespace, inputs: list[np.ndarray], config: dict) -> tuple[list[Played | str], dict]:
    """Every scenario (its input, then --tail-s of silence) through the preset's model in this process;
    `config` is each conversation's sampling (seed, temperatures), as a `start` would carry it. The
recordings and what the run was (results.json's meta.offline)."""
    from .offline_model import load_rows

    tail = np.zeros(int(round(args.tail_s * SAMPLE_RATE)), np.float32)
    totals = [np.concatenate([np.asarray(pcm, np.float32), tail]) for pcm in inputs]
    model, about = load_rows(args.preset, args.moshi_spec, args.rows, args.device, args.dtype, args.threads)
    workers = 0 if args.codec == "pcm16" else (args.codec_workers or os.cpu_count() or 1)
    # spawn: the parent holds torch's threads; the workers need numpy and sphn only
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers
            else InlineExecutor())
    audio_s = sum(t.size for t in totals) / SAMPLE_RATE
    bar = tqdm(total=len(totals), desc=f"eval offline ({args.rows} rows)", unit="scenario", file=sys.stderr)
    started = time.perf_counter()
    try:
        run = run_offline(model, totals, config=config, codec=args.codec, codec_pool=pool,
                          progress=lambda _: bar.update(1))
    finally:
        bar.close()
        if isinstance(pool, ProcessPoolExecutor):
            pool.shutdown(cancel_futures=True)
    wall = time.perf_counter() - started
    played: list[Played | str] = [Played(output=rec, frames_sent=len(split_frames(t)), chunks_received=frames)
              for rec, t, frames in zip(run.recordings, totals, run.frames)]
    about |= {"codec_workers": workers, "wall_s": round(wall, 2), "audio_s": round(audio_s, 2),
              "scenarios_per_min": round(60.0 * len(totals) / wall, 1), "times_real_time": round(audio_s / wall, 1),
              "steps": run.steps, "rows_per_step": round(run.row_steps / max(1, run.steps), 2),
              "step_ms": round(1000.0 * wall / max(1, run.steps), 1)}
    print(f"eval offline: {len(totals)} scenarios ({audio_s:.0f} s of audio) in {wall:.1f} s: "
          f"{about['scenarios_per_min']} scenarios/min, {about['times_real_time']}x real time, {run.steps} steps "
          f"of {about['rows_per_step']} rows ({about['step_ms']} ms each, codecs included, "
          f"{FRAME_S * 1000:.0f} ms of audio per row)", file=sys.stderr)
    return played, about
