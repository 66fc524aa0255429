"""Statistics of benchmark samples: percentiles, medians and quartiles, per-round ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from meshnode.bench.plan import BASELINE

#: the plain meshnode node; variants that add to it (tracing, metrics) are also compared with it per round
NODE = "C"
#: the hand-written server that authorizes by hand: meshnode servers are also compared with it per round
LIMIT = "G"

__all__ = ["Spread", "json_safe", "percentile", "ratio", "spread", "summarize_cells", "summarize_handshakes"]

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


def _per_round(own: list[dict[str, Any]], base: dict[int, dict[str, Any]], key: str) -> list[float | None]:
    return [ratio(c[key], base[c["round"]][key]) if c["round"] in base else None for c in own]


def summarize_cells(cells: list[dict[str, Any]], variants: list[str], workloads: list[str]) -> dict[str, Any]:
    """Per workload and variant: medians [IQR] over rounds, per-round ratios to the baseline and
    (``vs_node``) to the plain node C of the same round."""
    out: dict[str, Any] = {}
    for workload in workloads:
        mine = [c for c in cells if c["workload"] == workload]
        base = {c["round"]: c for c in mine if c["variant"] == BASELINE}
        node = {c["round"]: c for c in mine if c["variant"] == NODE}
        limit = {c["round"]: c for c in mine if c["variant"] == LIMIT}
        rows: dict[str, Any] = {}
        for variant in variants:
            own = [c for c in mine if c["variant"] == variant]
            rows[variant] = {
                "calls": sum(c["calls"] for c in own),
                "errors": sum(c["errors"] for c in own),
                "calls_per_s": spread([c["calls_per_s"] for c in own]),
                "p50_ms": spread([c["p50_ms"] for c in own]),
                "p99_ms": spread([c["p99_ms"] for c in own]),
                "server_cpu_us": spread([c["server_cpu_us"] for c in own]),
                "client_cpu_us": spread([c["client_cpu_us"] for c in own]),
                "throughput_ratio": spread(_per_round(own, base, "calls_per_s")),
                "server_cpu_ratio": spread(_per_round(own, base, "server_cpu_us")),
                "client_cpu_ratio": spread(_per_round(own, base, "client_cpu_us")),
            }
            if node and variant != NODE:  # what a variant adds to the plain node, round by round
                rows[variant]["vs_node"] = {
                    "throughput_ratio": spread(_per_round(own, node, "calls_per_s")),
                    "server_cpu_ratio": spread(_per_round(own, node, "server_cpu_us")),
                }
            if limit and variant != LIMIT:  # next to the limit: a hand-written authorizing server
                rows[variant]["vs_limit"] = {
                    "throughput_ratio": spread(_per_round(own, limit, "calls_per_s")),
                    "server_cpu_ratio": spread(_per_round(own, limit, "server_cpu_us")),
                }
        out[workload] = rows
    return out


def summarize_handshakes(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates, server CPU and per-round dynamic/static ratios of the handshake batches."""
    by = {(b["round"], b["credentials"]): b for b in batches}
    rounds = sorted({b["round"] for b in batches})

    def each(kind: str, key: str) -> list[float | None]:
        return [by[r, kind][key] for r in rounds]

    def ratios(key: str) -> list[float | None]:
        return [ratio(by[r, "dynamic"][key], by[r, "static"][key]) for r in rounds]

    return {
        "static_per_s": spread(each("static", "per_s")),
        "dynamic_per_s": spread(each("dynamic", "per_s")),
        "ratio": spread(ratios("per_s")),
        "static_server_cpu_us": spread(each("static", "server_cpu_us")),
        "dynamic_server_cpu_us": spread(each("dynamic", "server_cpu_us")),
        "cpu_ratio": spread(ratios("server_cpu_us")),
        "errors": sum(b["errors"] for b in batches),
    }


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no spelling for them), for the result files."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
