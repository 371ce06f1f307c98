"""The in-process LLM, batched (continuous batching) vs one turn at a time, side by side.

For each N in --turns, N turns start at once (greedy, --max-tokens each, different prompts); it prints
tokens/s over all of them and each turn's first-token latency (p50, max) from its start, for both
paths on the same model object in the same run, and the ratios.

    PYTHONPATH=. .venv/bin/python scripts/bench_llm.py --llm tiny --turns 1,4,8 --max-tokens 64 --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import torch

from duplex.models.llm import ChatMessage, TransformersLLM, load_llm


def history(i: int) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a helpful voice assistant. Answer briefly."),
            ChatMessage("user", f"Question number {i}: tell me something about music and the weather.")]


async def one_turn(llm: TransformersLLM, i: int, max_tokens: int, started: float) -> tuple[float, int]:
    first = None
    count = 0
    async for _ in llm.stream(history(i), temperature=0.0, max_tokens=max_tokens, cancel=asyncio.Event()):
        if first is None:
            first = time.perf_counter() - started
        count += 1
    return (first if first is not None else float("nan")), count


async def run(llm: TransformersLLM, n: int, max_tokens: int) -> dict:
    tokens_before = llm.tokens_generated
    started = time.perf_counter()
    results = await asyncio.gather(*(one_turn(llm, i, max_tokens, started) for i in range(n)))
    wall = time.perf_counter() - started
    firsts = [r[0] * 1000 for r in results]
    tokens = llm.tokens_generated - tokens_before
    return {"tok_s": tokens / wall, "first_p50": statistics.median(firsts), "first_max": max(firsts),
            "wall_s": wall, "tokens": tokens}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="tiny", help="model spec: tiny, a hub id or a local directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--turns", default="1,4,8", help="concurrent turns, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per figure; the best is kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batched = load_llm(args.llm, args.device)
    assert isinstance(batched, TransformersLLM)
    one_at_a_time = TransformersLLM(batched.model, batched.tokenizer, name=batched.name, max_rows=1)
    await run(batched, 2, 8)   # warm-up
    await run(one_at_a_time, 1, 8)
    print(f"LLM {args.llm} on {args.device}, {torch.get_num_threads()} thread(s), greedy, "
          f"{args.max_tokens} tokens per turn (best of {args.repeats})")
    print(f"{'N':>3} | {'path':<13} | {'tok/s':>8} | {'first p50 ms':>12} | {'first max ms':>12} | {'wall s':>7}")
    for n in (int(x) for x in args.turns.split(",")):
        figures = {}
        for label, llm in (("one at a time", one_at_a_time), ("batched", batched)):
            runs = [await run(llm, n, args.max_tokens) for _ in range(args.repeats)]
            best = max(runs, key=lambda r: r["tok_s"])
            best["first_p50"] = min(r["first_p50"] for r in runs)
            best["first_max"] = min(r["first_max"] for r in runs)
            figures[label] = best
            print(f"{n:>3} | {label:<13} | {best['tok_s']:>8.0f} | {best['first_p50']:>12.1f} | "
                  f"{best['first_max']:>12.1f} | {best['wall_s']:>7.2f}")
        old, new = figures["one at a time"], figures["batched"]
        print(f"{n:>3} | {'ratio':<13} | {new['tok_s'] / old['tok_s']:>7.2f}x | "
              f"{new['first_p50'] / old['first_p50']:>11.2f}x | {new['first_max'] / old['first_max']:>11.2f}x |")
    print(f"batched: {batched.stats()}")
    await batched.close()
    await one_at_a_time.close()


if __name__ == "__main__":
    asyncio.run(main())
