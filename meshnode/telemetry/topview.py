"""What ``meshnode top`` shows: nodes' ``/metrics`` read, compared between two scrapes, and drawn.

A :class:`Scrape` is one node's metrics endpoint at one moment: its name,
SPIFFE ID and SVID time to expiry, and per (direction, method, peer) the
RPC duration histogram summed over status codes, with the OK and denied
(PERMISSION_DENIED, UNAUTHENTICATED) counts. :func:`rows` compares a scrape
with the previous one (rates over the interval) or, the first time, with
the node's start (``process_start_time_seconds``): calls/s, success rate,
p50/p99 (interpolated within histogram buckets, as Prometheus'
``histogram_quantile`` does), denials. Fetching and parsing use only the
standard library and prometheus-client's text parser; nothing here blocks
except :func:`scrape` (bounded by its timeout).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshnode.config.duration import format_duration
from meshnode.errors import ConfigError, ScrapeError

__all__ = ["MAX_BODY", "Row", "Scrape", "ScrapeError", "Stats", "normalise_url", "parse", "render", "rows", "scrape"]

#: The largest /metrics body read (a hostile or broken endpoint cannot exhaust memory).
MAX_BODY = 32 << 20
_DENIED = {"7", "16"}  # PERMISSION_DENIED, UNAUTHENTICATED
_SIDES = {"rpc_server_call_duration_seconds": "in", "rpc_client_call_duration_seconds": "out"}


@dataclass
class Stats:
    """One (direction, method, peer) of a node: cumulative counts since the node started."""

    calls: float = 0.0
    ok: float = 0.0
    denied: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def minus(self, earlier: Stats | None) -> Stats:
        if earlier is None:
            return self
        return Stats(
            self.calls - earlier.calls, self.ok - earlier.ok, self.denied - earlier.denied,
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )


@dataclass(frozen=True)
class Scrape:
    url: str
    node: str
    spiffe_id: str
    svid_seconds_left: float | None
    started: float | None  # the node process's start (epoch seconds)
    at: float  # when the scrape was taken (epoch seconds)
    stats: Mapping[tuple[str, str, str], Stats]  # (in|out, "pkg.Service/Method", peer)


@dataclass(frozen=True)
class Row:
    direction: str
    method: str
    peer: str
    rate: float | None
    success: float | None
    p50: float | None
    p99: float | None
    denied: float
    calls: float


def normalise_url(text: str) -> str:
    """``host:port`` -> ``http://host:port/metrics``; a URL without a path gets ``/metrics``.

    ConfigError (a usage error, exit 2) when it is not an http(s) URL with a host.
    """
    url = text if "://" in text else f"http://{text}"
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/"):
        raise ConfigError(reason=f"{text!r} is not a metrics URL (e.g. http://127.0.0.1:9464/metrics)",
                          component="top", value=text)
    return url if "/" in rest else f"{url}/metrics"


def scrape(url: str, timeout: float = 5.0) -> Scrape:
    """Read and parse one node's ``/metrics``; ScrapeError naming the URL when it cannot."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # http(s) only: normalise_url
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise ScrapeError(reason=f"HTTP {exc.code} {exc.reason}", component=url, value=url) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ScrapeError(reason=f"unreachable ({reason})", component=url, value=url) from None
    if len(body) > MAX_BODY:
        raise ScrapeError(reason=f"the response is larger than {MAX_BODY >> 20} MiB; not a meshnode node's metrics",
                          component=url, value=url)
    return parse(body.decode("utf-8", errors="replace"), url, time.time())


def parse(text: str, url: str, at: float) -> Scrape:
    """A scrape from Prometheus text; ScrapeError when it is not text format or not a meshnode node's."""
    from prometheus_client.parser import text_string_to_metric_families

    info: dict[str, str] | None = None
    expiry: list[float] = []
    started = None
    stats: dict[tuple[str, str, str], Stats] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "meshnode_node_info":
                    info = labels
                elif name == "meshnode_identity_seconds_to_expiry":
                    expiry.append(value)
                elif name == "process_start_time_seconds":
                    started = value
                elif family.name in _SIDES:
                    _add(stats, _SIDES[family.name], name, labels, value)
    except (ValueError, TypeError, IndexError) as exc:
        raise ScrapeError(reason=f"not Prometheus text format ({exc})", component=url, value=url) from None
    if info is None:
        raise ScrapeError(reason="not a meshnode metrics endpoint (no meshnode_node_info)", component=url, value=url)
    return Scrape(url, info.get("node", "?"), info.get("spiffe_id", "?"), min(expiry) if expiry else None,
                  started, at, stats)


def _add(stats: dict[tuple[str, str, str], Stats], side: str, name: str, labels: Mapping[str, str],
         value: float) -> None:
    method = f"{labels.get('rpc_service', '')}/{labels.get('rpc_method', '')}"
    entry = stats.setdefault((side, method, labels.get("meshnode_peer_spiffe_id", "")), Stats())
    if name.endswith("_bucket"):
        le = float(labels.get("le", "inf"))
        entry.buckets[le] = entry.buckets.get(le, 0.0) + value
    elif name.endswith("_count"):
        code = labels.get("rpc_grpc_status_code", "")
        entry.calls += value
        entry.ok += value if code == "0" else 0.0
        entry.denied += value if code in _DENIED else 0.0


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile (0-1) of a cumulative histogram, interpolated within its bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower  # beyond the largest finite bound: report that bound
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


def rows(current: Scrape, previous: Scrape | None = None) -> list[Row]:
    """The node's rows: over the interval since ``previous``, or since the node started."""
    elapsed = None
    if previous is not None and previous.url == current.url and previous.started == current.started:
        elapsed = current.at - previous.at
        before: Mapping[tuple[str, str, str], Stats] = previous.stats
    else:
        elapsed = current.at - current.started if current.started is not None else None
        before = {}
    out = []
    for key, total in sorted(current.stats.items()):
        delta = total.minus(before.get(key))
        rate = delta.calls / elapsed if elapsed else None
        some = delta.calls > 0
        out.append(Row(
            key[0], key[1], key[2], rate, delta.ok / delta.calls if some else None,
            quantile(0.5, delta.buckets) if some else None, quantile(0.99, delta.buckets) if some else None,
            delta.denied, total.calls,
        ))
    return out


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e3:.2f}ms"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def render(scrapes: Sequence[Scrape | ScrapeError], previous: Mapping[str, Scrape], window: str) -> str:
    """One frame: per node a header line, then its rows (or the error naming its URL)."""
    lines = [f"meshnode top: {len(scrapes)} node(s); rates, success, latency and denials {window}"]
    header = ("DIR", "METHOD", "PEER", "CALLS/S", "SUCCESS", "P50", "P99", "DENIED", "CALLS")
    for item in scrapes:
        lines.append("")
        if isinstance(item, ScrapeError):
            lines.append(f"NODE ?  {item}")
            continue
        expiry = "SVID expires in " + format_duration(round(item.svid_seconds_left)) \
            if item.svid_seconds_left is not None else "SVID expiry unknown"
        lines.append(f"NODE {item.node}  {item.spiffe_id}  {expiry}  ({item.url})")
        table = [header] + [
            (r.direction, r.method, r.peer, "-" if r.rate is None else f"{r.rate:.1f}",
             "-" if r.success is None else f"{r.success * 100:.1f}%", _seconds(r.p50), _seconds(r.p99),
             f"{r.denied:.0f}", f"{r.calls:.0f}")
            for r in rows(item, previous.get(item.url))
        ]
        if len(table) == 1:
            lines.append("  no calls yet")
            continue
        lines += _columns(table)
    return "\n".join(lines) + "\n"


def _columns(table: Iterable[Sequence[str]]) -> list[str]:
    lines = list(table)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    right = {3, 4, 5, 6, 7, 8}  # the numbers
    out = []
    for line in lines:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  " + "  ".join(cells).rstrip())
    return out
