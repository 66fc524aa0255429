"""Small statistics for benchmark samples: percentiles, medians, interquartile ranges."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["Spread", "percentile", "ratio", "spread"]

Spread = dict[str, float | int | None]


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = values if presorted else sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float | None]) -> Spread:
    """Median, first and third quartile and count of the finite values (None when there are none)."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return {"median": None, "q1": None, "q3": None, "n": 0}
    return {
        "median": percentile(finite, 50, presorted=True),
        "q1": percentile(finite, 25, presorted=True),
        "q3": percentile(finite, 75, presorted=True),
        "n": len(finite),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` when both are finite and the denominator is positive, else None."""
    if numerator is None or denominator is None:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return None
    return numerator / denominator
