"""Percentile summaries of latency samples, one definition for the client, `duplex bench` and the scripts."""

from __future__ import annotations

import typing as tp

import numpy as np


def percentiles(values: tp.Sequence[float], points: tp.Sequence[float] = (50, 90, 99),
                digits: int = 1) -> dict[str, float] | None:
    """{"p50": ..., "p90": ..., ...} rounded to `digits`, or None when there are no values."""
    if len(values) == 0:
        return None
    found = np.percentile(np.asarray(values, dtype=np.float64), list(points))
    return {f"p{point:g}": round(float(value), digits) for point, value in zip(points, found)}
