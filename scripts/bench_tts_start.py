"""A TTS turn's first frame, side by side in one process: the old stepping against `TtsEngineModel.produce`.

Each trial starts a turn whose text is all there, beside `--speaking` turns that are already speaking, and
times the model thread's work until the new turn's first frame (no LLM, no event loop: the TTS alone).

- before: every slot's row and every codebook once audio starts (`lean_steps=False`), and each step steps
  every turn that may step (the speaking ones are dragged along, as the cascade's pump did before);
- after: `produce`: the starting turn's steps back to back on its rows only, the speaking turns joining the
  steps they take their frames from (2 each), only the started codebooks sampled.

Both give the same audio (tests/test_tts_fast_start.py). Prints per case the model steps, the step count
with the depformer, and the time p50/p90 (ms) of each, and after/before ratios.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_tts_start.py --slots 8 --speaking 0,3,7 --trials 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from duplex.models.inference import compile_off_for_process
from duplex.models.spec import WEIGHTS_DIR, checkpoint_from_dir
from duplex.models.tiny.tts import ensure_tiny_tts
from duplex.models.tts import TtsEngineModel

TEXT = "hello how are you today i am fine thank you what would you like to talk about " * 2


def first_frame(engine: TtsEngineModel, speaking: int, lean: bool) -> tuple[float, int, int]:
    """(seconds, steps, steps with codebooks sampled) until a new turn's first frame beside `speaking` turns."""
    others = [engine.start_turn(seed=100 + i) for i in range(speaking)]
    for turn in others:
        turn.push_text(TEXT * 3)
    while not all(t.gen.emitted for t in others):
        engine.produce(others)
    turn = engine.start_turn(seed=1)
    turn.push_text(TEXT)
    before = dict(engine.stats)
    started = time.perf_counter()
    if lean:
        engine.produce([*others, turn], frames_each=2)
    else:
        got = None
        while got is None:   # the old pump: each step steps every turn that may step
            got = engine.step([*others, turn]).get(turn)
    elapsed = time.perf_counter() - started
    steps = engine.stats["steps"] - before["steps"]
    assert turn.gen.emitted == 1 and steps >= engine.first_audio_steps
    for t in [*others, turn]:
        t.cancel()
    return elapsed, steps, engine.stats["codebooks"] - before["codebooks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--speaking", default="0,3,7", help="turns already speaking beside the new one")
    parser.add_argument("--trials", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    compile_off_for_process()
    checkpoint = checkpoint_from_dir(ensure_tiny_tts(WEIGHTS_DIR / "tiny-tts"))
    engines = {"before": TtsEngineModel(checkpoint, slots=args.slots, lean_steps=False),
               "after": TtsEngineModel(checkpoint, slots=args.slots, lean_steps=True)}
    print("| speaking | case | steps | codebooks sampled | first frame p50 ms | p90 ms |")
    print("|---|---|---|---|---|---|")
    for speaking in (int(n) for n in args.speaking.split(",")):
        times: dict[str, list[float]] = {"before": [], "after": []}
        work = {}
        for trial in range(args.trials + 1):
            for case, engine in engines.items():     # interleaved, so that both see the same load
                seconds, steps, codebooks = first_frame(engine, speaking, lean=case == "after")
                if trial:                             # the first trial warms up
                    times[case].append(seconds * 1000)
                work[case] = (steps, codebooks)
        for case in ("before", "after"):
            t = sorted(times[case])
            p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
            print(f"| {speaking} | {case} | {work[case][0]} | {work[case][1]} | {statistics.median(t):.0f} | {p90:.0f} |")
        ratio = statistics.median(times["after"]) / statistics.median(times["before"])
        print(f"| {speaking} | after/before | | | {ratio:.2f}x | |")


if __name__ == "__main__":
    main()
