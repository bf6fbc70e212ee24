"""Small statistics helpers: percentiles (linear interpolation between closest ranks) and
medians. Pure."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated.

    With few samples p99 is close to the maximum; callers keep enough samples for the figure to
    mean something and report how many there were.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else math.nan


def median_of_runs(runs: Sequence[float]) -> float:
    """The figure reported for several repetitions of one measurement: their median."""
    finite = [value for value in runs if not math.isnan(value)]
    return median(finite)
