"""Traces rebuilt from span records: grouping, choosing one, and its span tree.

Spans are grouped by trace id; within a trace they form a tree by parent id,
children ordered by start time. A span whose parent is in none of the files
(its caller exported elsewhere, or not yet) is an *orphan* and stands at top
level. Without an explicit id, the trace to show is the most recent one:
the trace whose first span started last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from meshnode.errors import ConfigError
from meshnode.telemetry.jsonl import SpanRecord

__all__ = ["Row", "Trace", "group_traces", "pick_trace"]


@dataclass(frozen=True)
class Row:
    span: SpanRecord
    depth: int
    prefix: str  # tree glyphs before the name
    orphan: bool


@dataclass(frozen=True)
class Trace:
    trace_id: str
    spans: tuple[SpanRecord, ...]

    @property
    def start_ns(self) -> int:
        return min(s.start_ns for s in self.spans)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @cached_property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({s.service_name for s in self.spans}))

    @cached_property
    def root(self) -> SpanRecord:
        ids = {s.span_id for s in self.spans}
        tops = [s for s in self.spans if s.parent_span_id not in ids] or list(self.spans)
        return min(tops, key=lambda s: (s.parent_span_id is not None, s.start_ns))

    def rows(self, *, ascii_only: bool = False) -> list[Row]:
        """Spans in tree order: roots and orphans by start time, each followed by its subtree."""
        by_id = {s.span_id: s for s in self.spans}
        children: dict[str, list[SpanRecord]] = {}
        tops: list[SpanRecord] = []
        for s in self.spans:
            if s.parent_span_id is not None and s.parent_span_id in by_id:
                children.setdefault(s.parent_span_id, []).append(s)
            else:
                tops.append(s)
        tee, last, bar, gap = ("|- ", "`- ", "|  ", "   ") if ascii_only else ("├─ ", "└─ ", "│  ", "   ")
        out: list[Row] = []

        def walk(span: SpanRecord, depth: int, lead: str, glyph: str, orphan: bool) -> None:
            out.append(Row(span, depth, lead + glyph, orphan))
            if glyph == "":
                below = ""
            elif glyph == "? ":
                below = "  "
            else:
                below = lead + (bar if glyph == tee else gap)
            kids = sorted(children.get(span.span_id, ()), key=lambda s: (s.start_ns, s.span_id))
            for i, kid in enumerate(kids):
                walk(kid, depth + 1, below, last if i == len(kids) - 1 else tee, False)

        for top in sorted(tops, key=lambda s: (s.start_ns, s.span_id)):
            orphan = top.parent_span_id is not None
            walk(top, 0, "", "? " if orphan else "", orphan)
        return out


def group_traces(spans: Iterable[SpanRecord]) -> list[Trace]:
    """Traces, oldest first (by their first span's start)."""
    by_trace: dict[str, list[SpanRecord]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    traces = [Trace(tid, tuple(group)) for tid, group in by_trace.items()]
    return sorted(traces, key=lambda t: (t.start_ns, t.trace_id))


def pick_trace(traces: Sequence[Trace], trace_id: str | None = None) -> Trace:
    """The trace with this id (or unique id prefix), else the most recent one (latest first span)."""
    if not traces:
        raise ValueError("no traces")
    if trace_id is None:
        return max(traces, key=lambda t: (t.start_ns, t.trace_id))
    wanted = trace_id.strip().lower()
    matches = [t for t in traces if t.trace_id.startswith(wanted)] if wanted else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ConfigError(
            f"trace: {trace_id!r} matches {len(matches)} traces ({', '.join(t.trace_id for t in matches[:5])}); "
            "give more digits"
        )
    recent = sorted(traces, key=lambda t: t.start_ns, reverse=True)
    listed = ", ".join(t.trace_id for t in recent[:10])
    more = f" and {len(recent) - 10} more" if len(recent) > 10 else ""
    raise ConfigError(f"trace: no trace {trace_id!r} in the files; they hold {listed}{more}")
