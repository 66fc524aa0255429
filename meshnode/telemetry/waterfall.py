"""A trace as a terminal waterfall (see :mod:`meshnode.telemetry.traces` for the tree).

One line per span in tree order; orphans (parent in none of the files) are
drawn at top level with a ``?`` marker. Each line shows the span name
indented by depth, the node (``service.name``), the peer's SPIFFE ID, the
status (``OK``, ``ERROR`` or the gRPC code name), the duration and a bar
placed on the trace's timeline.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from meshnode.telemetry import attributes as attr
from meshnode.telemetry.jsonl import SpanRecord
from meshnode.telemetry.traces import Row, Trace

__all__ = [
    "abbreviate_spiffe_id",
    "render_list",
    "render_trace",
    "status_text",
]

_GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
_PALETTE = ("36", "35", "33", "34", "32", "96", "95", "93")
_RED = "31"


def status_text(span: SpanRecord) -> str:
    """``OK``, ``ERROR`` or the gRPC status code name (``PERMISSION_DENIED``) when it is not OK."""
    code = span.attributes.get("rpc.grpc.status_code")
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        return _GRPC_CODES[code] if 0 <= code < len(_GRPC_CODES) else f"CODE_{code}"
    return "ERROR" if span.status_code == "ERROR" else "OK"


def abbreviate_spiffe_id(spiffe_id: str, width: int) -> str:
    """``spiffe://example.org/ns/prod/sa/beta`` -> ``example.org/…/sa/beta`` or ``…/sa/beta`` to fit ``width``.

    The scheme goes first, then middle path segments, then the trust domain:
    the last segments name the workload.
    """
    text = spiffe_id.removeprefix("spiffe://")
    if len(text) <= width:
        return text
    domain, _, path = text.partition("/")
    segments = path.split("/") if path else []
    for head in (f"{domain}/…/", "…/"):
        tail = ""
        for seg in reversed(segments):
            candidate = f"{seg}/{tail}" if tail else seg
            if len(head) + len(candidate) > width:
                break
            tail = candidate
        if tail:
            return head + tail
    return "…" + text[-(width - 1) :] if width > 1 else "…"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fit_name(prefix: str, name: str, width: int) -> str:
    """Keep the tree glyphs and the end of the name (``…Demo/Echo``): the method is the telling part."""
    room = width - len(prefix)
    if len(name) <= room:
        return prefix + name
    return prefix + ("…" + name[-(room - 1) :] if room > 1 else "…")[: max(room, 0)]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _ms(ns: int) -> str:
    return f"{ns / 1e6:,.2f} ms"


def _paint(text: str, code: str | None, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


@dataclass(frozen=True)
class _Line:
    row: Row
    node: str
    peer: str
    status: str
    duration: str

    @classmethod
    def of(cls, row: Row) -> _Line:
        peer = row.span.attributes.get(attr.PEER_SPIFFE_ID)
        return cls(
            row, row.span.service_name, str(peer) if peer else "-", status_text(row.span), _ms(row.span.duration_ns)
        )


@dataclass
class _Widths:
    name: int
    node: int
    peer: int
    status: int
    duration: int
    bar: int = 0

    @classmethod
    def fit(cls, lines: Sequence[_Line], total: int) -> _Widths:
        w = cls(
            name=min(max(len(x) for x in ["SPAN", *(ln.row.prefix + ln.row.span.name for ln in lines)]), 48),
            node=min(max(len(x) for x in ["NODE", *(ln.node for ln in lines)]), 16),
            peer=min(max(len(x) for x in ["PEER", *(ln.peer.removeprefix("spiffe://") for ln in lines)]), 32),
            status=max(len(x) for x in ["STATUS", *(ln.status for ln in lines)]),
            duration=max(len(x) for x in ["DURATION", *(ln.duration for ln in lines)]),
        )
        # The timeline gets at least 20 columns: squeeze the peer (to 16), then the name (to 20).
        fixed = w.node + w.status + w.duration + 5 * len("  ")
        w.peer = max(16, min(w.peer, total - fixed - w.name - 20))
        w.name = max(20, min(w.name, total - fixed - w.peer - 20))
        w.bar = max(10, total - fixed - w.name - w.peer)
        return w


def render_trace(trace: Trace, *, width: int = 120, color: bool = False, ascii_only: bool = False) -> str:
    """The waterfall as text: a header, then one line per span in tree order."""
    lines = [_Line.of(row) for row in trace.rows(ascii_only=ascii_only)]
    w = _Widths.fit(lines, width)
    t0, total = trace.start_ns, max(trace.duration_ns, 1)
    full = "#" if ascii_only else "█"
    palette = {svc: _PALETTE[i % len(_PALETTE)] for i, svc in enumerate(trace.services)}
    started = dt.datetime.fromtimestamp(t0 / 1e9, dt.UTC).isoformat(timespec="milliseconds")
    out = [
        f"trace {trace.trace_id}  {_count(len(trace.spans), 'span')}  {_count(len(trace.services), 'node')} "
        f"({', '.join(trace.services)})  {_ms(trace.duration_ns)}  started {started}",
        "  ".join(
            [
                "SPAN".ljust(w.name),
                "NODE".ljust(w.node),
                "PEER".ljust(w.peer),
                "STATUS".ljust(w.status),
                "DURATION".rjust(w.duration),
                _axis(w.bar, trace.duration_ns),
            ]
        ),
    ]
    for ln in lines:
        span = ln.row.span
        lo = min(int((span.start_ns - t0) / total * w.bar), w.bar - 1)
        hi = min(max(math.ceil((span.end_ns - t0) / total * w.bar), lo + 1), w.bar)
        bad = ln.status != "OK"
        peer = abbreviate_spiffe_id(ln.peer, w.peer) if ln.peer != "-" else "-"
        cells = [
            _fit_name(ln.row.prefix, span.name, w.name).ljust(w.name),
            _paint(_fit(ln.node, w.node).ljust(w.node), palette.get(ln.node), color),
            peer.ljust(w.peer),
            _paint(ln.status.ljust(w.status), _RED if bad else None, color),
            ln.duration.rjust(w.duration),
            " " * lo + _paint(full * (hi - lo), _RED if bad else palette.get(ln.node), color),
        ]
        out.append("  ".join(cells))
    if any(ln.row.orphan for ln in lines):
        out.append("? = the parent span is in none of the files (exported by another node, or not yet)")
    return "\n".join(out) + "\n"


def _axis(width: int, duration_ns: int) -> str:
    right = _ms(duration_ns)
    if width < len(right) + 6:
        return right.rjust(width)
    return "0 ms" + right.rjust(width - 4)


def render_list(traces: Sequence[Trace]) -> str:
    """One line per trace, most recent first."""
    lines = [f"{'TRACE ID':32}  {'STARTED (UTC)':23}  {'SPANS':>5}  {'NODES':>5}  {'DURATION':>12}  ROOT"]
    for t in sorted(traces, key=lambda t: (t.start_ns, t.trace_id), reverse=True):
        started = dt.datetime.fromtimestamp(t.start_ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        lines.append(
            f"{t.trace_id}  {started[:23]}  {len(t.spans):>5}  {len(t.services):>5}  "
            f"{_ms(t.duration_ns):>12}  {t.root.name} ({t.root.service_name})"
        )
    return "\n".join(lines) + "\n"
