"""What `duplex eval` writes: results.json (per scenario and aggregate), a Markdown table, a plot, and
the comparison of two results files. `ROWS` is the one list of reported figures: the table, the
comparison and the plot all read it."""

from __future__ import annotations

import typing as tp
from pathlib import Path

# (label, path into a mode's aggregate); ↓ lower is better, ↑ higher is better
ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("pause handling: TOR ↓", ("pause_handling", "tor")),
    ("backchannel: TOR ↓", ("backchannel", "tor")),
    ("backchannel: rate /s ↑", ("backchannel", "rate_per_s")),
    ("backchannel: JSD ↓", ("backchannel", "jsd")),
    ("turn-taking: TOR ↑", ("turn_taking", "tor")),
    ("turn-taking: latency p50 ms ↓", ("turn_taking", "latency_ms", "p50")),
    ("turn-taking: latency p90 ms ↓", ("turn_taking", "latency_ms", "p90")),
    ("interruption: speaking at onset (n)", ("interruption", "speaking_at_onset")),
    ("interruption: yield rate ↑", ("interruption", "yield_rate")),
    ("interruption: yield p50 ms ↓", ("interruption", "yield_ms", "p50")),
    ("interruption: yield p90 ms ↓", ("interruption", "yield_ms", "p90")),
    ("interruption: TOR ↑", ("interruption", "tor")),
    ("interruption: response p50 ms ↓", ("interruption", "response_latency_ms", "p50")),
    ("interruption: response p90 ms ↓", ("interruption", "response_latency_ms", "p90")),
]


def lookup(aggregate: dict, path: tuple[str, ...]) -> float | None:
    value: tp.Any = aggregate
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def cell(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"


def markdown_table(results: dict) -> str:
    modes = list(results["modes"])
    lines = ["| figure | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
    for label, path in ROWS:
        values = [lookup(results["modes"][m]["aggregate"], path) for m in modes]
        if all(v is None for v in values) and path[0] not in _kinds(results):
            continue
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines)


def _kinds(results: dict) -> set[str]:
    return {kind for mode in results["modes"].values() for kind in mode["aggregate"]}


def compare_table(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """For every mode in both files: each figure in A, in B, and B - A."""
    modes = [m for m in a["modes"] if m in b["modes"]]
    if not modes:
        raise ValueError(f"the two results files share no mode ({', '.join(a['modes'])} vs {', '.join(b['modes'])})")
    lines = [f"| mode | figure | {name_a} | {name_b} | {name_b} − {name_a} |", "|---|---|---|---|---|"]
    for mode in modes:
        for label, path in ROWS:
            va, vb = lookup(a["modes"][mode]["aggregate"], path), lookup(b["modes"][mode]["aggregate"], path)
            if va is None and vb is None:
                continue
            delta = None if va is None or vb is None else vb - va
            lines.append(f"| {mode} | {label} | {cell(va)} | {cell(vb)} | {'–' if delta is None else f'{delta:+.3g}'} |")
    return "\n".join(lines)


RATE_ROWS = ["pause handling: TOR ↓", "backchannel: TOR ↓", "turn-taking: TOR ↑", "interruption: yield rate ↑",
             "interruption: TOR ↑"]
LATENCY_ROWS = [("turn-taking latency", "turn-taking: latency p50 ms ↓", "turn-taking: latency p90 ms ↓"),
                ("yield time", "interruption: yield p50 ms ↓", "interruption: yield p90 ms ↓"),
                ("response after\ninterruption", "interruption: response p50 ms ↓", "interruption: response p90 ms ↓")]


def plot(results: dict, path: Path) -> None:
    """Left: rates per mode (0..1). Right: latencies per mode, bar p50, whisker to p90."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = dict(ROWS)
    modes = list(results["modes"])
    width = 0.8 / max(len(modes), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    for m, mode in enumerate(modes):
        aggregate = results["modes"][mode]["aggregate"]
        offset = (m - (len(modes) - 1) / 2) * width
        rates = [lookup(aggregate, paths[label]) for label in RATE_ROWS]
        left.bar([i + offset for i in range(len(rates))], [r if r is not None else 0 for r in rates], width=width, label=mode)
        p50 = [lookup(aggregate, paths[a]) for _, a, _ in LATENCY_ROWS]
        p90 = [lookup(aggregate, paths[b]) for _, _, b in LATENCY_ROWS]
        heights = [v if v is not None else 0 for v in p50]
        err = [max(0.0, (hi or 0) - (lo or 0)) for lo, hi in zip(p50, p90)]
        right.bar([i + offset for i in range(len(p50))], heights, width=width, yerr=[[0] * len(err), err], capsize=4,
                  label=mode)
    left.set_xticks(range(len(RATE_ROWS)), [r.replace(": ", "\n") for r in RATE_ROWS], fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_title("rates (0..1)")
    right.set_xticks(range(len(LATENCY_ROWS)), [name for name, _, _ in LATENCY_ROWS], fontsize=8)
    right.set_ylabel("ms")
    right.set_title("latencies (p50, whisker p90)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"duplex eval: {results['meta'].get('server', '')}, VAD {results['meta'].get('vad', '')}, "
                 f"{results['meta'].get('scenarios', 0)} scenarios")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
