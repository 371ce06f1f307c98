"""Scoring: pure functions from (a scenario's annotations, the assistant's speech segments) to figures.

The definitions follow Full-Duplex-Bench v1/v1.5 (github.com/DanielLin94144/Full-Duplex-Bench,
`v1_v1.5/evaluation/`), with its word-count rules dropped (there is no speech recogniser here: a
"turn" is judged from duration alone). docs/eval.md states each rule and where it departs.

Every time is in seconds on the scenario's timeline (0 = the first sample of its input.wav); every
latency returned is in milliseconds.
"""

from __future__ import annotations

import math
import typing as tp

import numpy as np

from ..stats import percentiles
from .scenarios import Scenario
from .vad import Segment, merge_segments

MERGE_GAP_S = 0.5       # assistant speech separated by at most this is one stretch (FDB's timing script: 0.5 s)
TURN_MIN_S = 1.0        # a stretch this long or longer is a turn; shorter is a backchannel (FDB: 1 s)
JSD_BIN_S = 0.2         # histogram bin for backchannel timing (FDB: 0.2 s windows)
_EPSILON = 1e-10


def stretches(segments: tp.Sequence[Segment]) -> list[Segment]:
    """The detector's segments with gaps of at most MERGE_GAP_S bridged."""
    return merge_segments(segments, MERGE_GAP_S)


def _turns(segments: tp.Sequence[Segment]) -> list[Segment]:
    return [(s, e) for s, e in stretches(segments) if e - s >= TURN_MIN_S]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def pause_handling(scenario: Scenario, segments: tp.Sequence[Segment]) -> dict:
    """Takeover: a turn-long stretch of assistant speech overlaps a pause of the user's held turn."""
    turns = _turns(segments)
    taken = [any(s < pe and e > ps for s, e in turns) for ps, pe in scenario.pauses]
    return {"takeover": any(taken), "pauses_taken": sum(taken), "pauses": len(taken)}


def _answer_start(segments: tp.Sequence[Segment], past_s: float, not_before_s: float = -math.inf) -> float | None:
    """Where the system's answer starts: the first segment that starts at or after `not_before_s` and reaches
    past `past_s`, provided the speech from there on spans at least TURN_MIN_S (FDB: first word to last word
    of the output, at least 1 s). A lone short sound is no answer."""
    later = [(s, e) for s, e in segments if e > past_s and s >= not_before_s]
    if not later or later[-1][1] - later[0][0] < TURN_MIN_S:
        return None
    return later[0][0]


def turn_taking(scenario: Scenario, segments: tp.Sequence[Segment]) -> dict:
    """The system takes the turn when it answers past the user's turn end (`_answer_start`); latency from the
    turn end to the answer's first speech, 0 when it started before (FDB clips negatives to 0)."""
    assert scenario.turn_end_s is not None
    end = scenario.turn_end_s
    start = _answer_start(segments, end)
    if start is None:
        return {"took_turn": False, "latency_ms": None, "overlapped_user": False}
    return {"took_turn": True, "latency_ms": _ms(max(0.0, start - end)), "overlapped_user": start < end}


def interruption(scenario: Scenario, segments: tp.Sequence[Segment], recording_end_s: float) -> dict:
    """The user barges in at [start, end] of `interruption`.

    - `speaking_at_onset`: a stretch of assistant speech covers the barge-in's start;
    - then `yielded` if that stretch ends at least MERGE_GAP_S before the recording does (quiet after it is
      heard), `yield_ms` = its end - barge-in start
      (FDB v1.5's stop latency, not cut at the end of the user's speech);
    - `responded` if an answer (`_answer_start`) starts after the system went quiet (or was quiet at onset) and
      reaches past the barge-in's end, `response_latency_ms` from the barge-in's end (FDB v1's latency).
    """
    assert scenario.interruption is not None
    onset, done = scenario.interruption
    merged = stretches(segments)
    current = next(((s, e) for s, e in merged if s <= onset < e), None)
    out: dict[str, tp.Any] = {"speaking_at_onset": current is not None, "yielded": None, "yield_ms": None,
                              "responded": False, "response_latency_ms": None}
    quiet_from = onset
    if current is not None:
        yielded = current[1] <= recording_end_s - MERGE_GAP_S   # a yield is seen only with quiet after it
        out["yielded"] = yielded
        if not yielded:
            return out
        out["yield_ms"] = _ms(current[1] - onset)
        quiet_from = current[1]
    start = _answer_start(segments, done, not_before_s=quiet_from)
    if start is not None:
        out["responded"] = True
        out["response_latency_ms"] = _ms(max(0.0, start - done))
    return out


def backchannel(scenario: Scenario, segments: tp.Sequence[Segment]) -> dict:
    """While the user talks (0 .. end of their last speech): detector segments shorter than TURN_MIN_S are
    backchannels, longer ones a takeover. `rate_per_s` = backchannels per second of that window.
    `jsd`: Jensen-Shannon distance (base e, as scipy's) between where the backchannels fall and where the
    cues are, on JSD_BIN_S bins (FDB compares with human backchannel timing the same way); 1 when there
    is no backchannel, None without cues."""
    window = max((e for _, e in scenario.user_speech), default=scenario.duration_s)
    inside = [(s, e) for s, e in segments if s < window]
    backchannels = [(s, e) for s, e in inside if e - s < TURN_MIN_S]
    takeover = any(e - s >= TURN_MIN_S for s, e in inside)
    jsd: float | None = None
    if scenario.backchannel_cues:
        jsd = 1.0 if not backchannels else js_distance(_histogram(backchannels, window),
                                                        _histogram([(t, t) for t in scenario.backchannel_cues], window))
    return {"takeover": takeover, "backchannels": len(backchannels),
            "rate_per_s": round(len(backchannels) / window, 4) if window > 0 else 0.0,
            "jsd": None if jsd is None else round(jsd, 4)}


def _histogram(spans: tp.Sequence[Segment], window_s: float) -> np.ndarray:
    bins = np.zeros(int(window_s / JSD_BIN_S) + 1)
    for start, end in spans:  # a span counts in every bin it touches (as FDB's)
        bins[int(start / JSD_BIN_S):min(int(end / JSD_BIN_S), len(bins) - 1) + 1] += 1
    return bins


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sqrt of the Jensen-Shannon divergence (natural log) of two histograms, each normalised."""
    p = (np.asarray(p, dtype=np.float64) + _EPSILON)
    q = (np.asarray(q, dtype=np.float64) + _EPSILON)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    divergence = 0.5 * float(np.sum(p * np.log(p / m))) + 0.5 * float(np.sum(q * np.log(q / m)))
    return math.sqrt(max(divergence, 0.0))


def score(scenario: Scenario, segments: tp.Sequence[Segment], recording_end_s: float) -> dict:
    """The figures of one scenario, by its kind."""
    if scenario.kind == "pause_handling":
        return pause_handling(scenario, segments)
    if scenario.kind == "turn_taking":
        return turn_taking(scenario, segments)
    if scenario.kind == "interruption":
        return interruption(scenario, segments, recording_end_s)
    return backchannel(scenario, segments)


def _rate(flags: tp.Sequence[bool | None]) -> float | None:
    values = [bool(f) for f in flags if f is not None]
    return round(sum(values) / len(values), 3) if values else None


def _spread(values: tp.Sequence[float | None]) -> dict:
    present = [v for v in values if v is not None]
    found: dict[str, float | None] = {"p50": None, "p90": None}
    found.update(percentiles(present, points=(50, 90)) or {})
    return {**found, "n": len(present)}


def aggregate(scored: tp.Sequence[dict]) -> dict:
    """Per kind, over scenarios scored by `score` (each a dict with its `kind` and figures)."""
    by_kind: dict[str, list[dict]] = {}
    for item in scored:
        by_kind.setdefault(item["kind"], []).append(item)
    out: dict[str, dict] = {}
    if items := by_kind.get("pause_handling"):
        out["pause_handling"] = {"n": len(items), "tor": _rate([i["takeover"] for i in items])}
    if items := by_kind.get("turn_taking"):
        out["turn_taking"] = {"n": len(items), "tor": _rate([i["took_turn"] for i in items]),
                              "latency_ms": _spread([i["latency_ms"] for i in items])}
    if items := by_kind.get("interruption"):
        out["interruption"] = {"n": len(items),
                               "speaking_at_onset": sum(bool(i["speaking_at_onset"]) for i in items),
                               "yield_rate": _rate([i["yielded"] for i in items]),
                               "yield_ms": _spread([i["yield_ms"] for i in items]),
                               "tor": _rate([i["responded"] for i in items]),
                               "response_latency_ms": _spread([i["response_latency_ms"] for i in items])}
    if items := by_kind.get("backchannel"):
        jsds = [i["jsd"] for i in items if i["jsd"] is not None]
        out["backchannel"] = {"n": len(items), "tor": _rate([i["takeover"] for i in items]),
                              "rate_per_s": round(float(np.mean([i["rate_per_s"] for i in items])), 4),
                              "jsd": round(float(np.mean(jsds)), 4) if jsds else None}
    return out
