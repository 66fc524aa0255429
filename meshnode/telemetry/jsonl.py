"""The span file: an SDK exporter that writes OTLP/JSON lines, and a reader of them (and of the older format).

Each line is one OTLP/JSON ``ExportTraceServiceRequest`` holding the spans
of one export batch (:mod:`meshnode.telemetry.otlpjson`): the format of the
OpenTelemetry Collector's ``file`` exporter, so a collector's ``otlpjson``
file receiver (or anything that reads OTLP/JSON) can ingest the file::

    {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "alpha"}}]},
      "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.grpc", "version": "0.66b2"},
        "spans": [{"traceId": "<32 hex>", "spanId": "<16 hex>", "parentSpanId": "<16 hex>", "flags": 769,
                   "name": "/demo.v1.Demo/Echo", "kind": 2, "startTimeUnixNano": "...", "endTimeUnixNano": "...",
                   "attributes": [...], "events": [...], "links": [...], "status": {"code": 2, "message": "..."}}]}]}]}

Files written before (one span per line, meshnode's own shape)::

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "parent_is_remote": bool, "name": "/demo.v1.Demo/Echo", "kind": "SERVER",
     "start_time_unix_nano": int, "end_time_unix_nano": int,
     "status": {"code": "UNSET" | "OK" | "ERROR", "description": str | null},
     "attributes": {...}, "events": [{"name": str, "time_unix_nano": int, "attributes": {...}}],
     "resource": {"service.name": ..., ...}, "scope": {"name": str, "version": str | null}}

are read as well (``meshnode trace show`` takes both, even mixed in one file).

Give each node its own file; ``meshnode trace show`` merges them. (Within
a process each line is written whole under a lock, in append mode; several
processes appending to one file usually works but a very long line may
interleave.) The reader skips and counts what it cannot use (a line cut
short by a crash, a foreign line, a span without ids), so a live file can
be read while written.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import format_span_id, format_trace_id

from meshnode.telemetry.otlpjson import decode_request, encode_spans, is_request

__all__ = ["JsonlSpanExporter", "ReadResult", "SpanEvent", "SpanRecord", "read_spans", "span_to_json"]

log = logging.getLogger("meshnode.telemetry")


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in (attributes or {}).items()}


def span_to_json(span: ReadableSpan) -> dict[str, Any]:
    """One finished span in meshnode's older one-span-per-line shape (still read; no longer written)."""
    ctx = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    return {
        "trace_id": format_trace_id(ctx.trace_id) if ctx else None,
        "span_id": format_span_id(ctx.span_id) if ctx else None,
        "parent_span_id": format_span_id(parent.span_id) if parent else None,
        "parent_is_remote": bool(parent and parent.is_remote),
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "attributes": _plain(span.attributes),
        "events": [
            {"name": e.name, "time_unix_nano": e.timestamp, "attributes": _plain(e.attributes)} for e in span.events
        ],
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
                "attributes": _plain(link.attributes),
            }
            for link in span.links
        ],
        "resource": _plain(span.resource.attributes),
        "scope": {"name": scope.name, "version": scope.version} if scope else None,
    }


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to a file, one OTLP/JSON request per export (one line); thread-safe.

    The file is opened (created) at construction so a bad path fails at
    start-up; :meth:`shutdown` flushes, fsyncs and closes it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = json.dumps(encode_spans(spans), separators=(",", ":"), default=str) + "\n" if spans else ""
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            if not lines:
                return SpanExportResult.SUCCESS
            try:
                self._file.write(lines)
            except OSError as exc:
                log.warning("telemetry: cannot write spans to %s: %s", self.path, exc)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True

    def shutdown(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                log.warning("telemetry: cannot sync span file %s: %s", self.path, exc)
            finally:
                self._file.close()


@dataclass(frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SpanRecord:
    """One span read back from a file."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status_code: str
    status_description: str | None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", "?"))

    @classmethod
    def from_json(cls, obj: Any) -> SpanRecord:
        """Build from one decoded line; raises ValueError/TypeError/KeyError when it is not a span."""
        status = obj.get("status") or {}
        events = tuple(
            SpanEvent(str(e["name"]), int(e.get("time_unix_nano") or 0), dict(e.get("attributes") or {}))
            for e in obj.get("events") or ()
        )
        record = cls(
            trace_id=_hex(obj["trace_id"], 32),
            span_id=_hex(obj["span_id"], 16),
            parent_span_id=_hex(obj["parent_span_id"], 16) if obj.get("parent_span_id") else None,
            name=str(obj["name"]),
            kind=str(obj.get("kind") or "INTERNAL"),
            start_ns=int(obj["start_time_unix_nano"]),
            end_ns=int(obj["end_time_unix_nano"]),
            status_code=str(status.get("code") or "UNSET"),
            status_description=status.get("description"),
            attributes=dict(obj.get("attributes") or {}),
            events=events,
            resource=dict(obj.get("resource") or {}),
        )
        return record


def _hex(value: Any, length: int) -> str:
    text = str(value).lower()
    if len(text) != length or any(c not in "0123456789abcdef" for c in text) or not text.strip("0"):
        raise ValueError(f"not a {length}-digit hex id: {value!r}")
    return text


@dataclass(frozen=True)
class ReadResult:
    spans: tuple[SpanRecord, ...]
    bad_lines: int


def read_spans(paths: Iterable[str | os.PathLike[str]]) -> ReadResult:
    """Read and merge span files (OTLP/JSON lines, or the older one-span lines); duplicate spans
    (same trace and span id) are kept once.

    Raises OSError when a file cannot be opened; lines (or spans in a line) that cannot be read are
    counted in ``bad_lines``, not fatal.
    """
    seen: dict[tuple[str, str], SpanRecord] = {}
    bad = 0
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError):
                    bad += 1
                    continue
                flat, skipped = decode_request(obj) if is_request(obj) else ([obj], 0)
                bad += skipped
                for item in flat:
                    try:
                        record = SpanRecord.from_json(item)
                    except (ValueError, TypeError, KeyError, AttributeError):
                        bad += 1
                        continue
                    seen.setdefault((record.trace_id, record.span_id), record)
    return ReadResult(tuple(seen.values()), bad)
