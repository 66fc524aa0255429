"""JSON log lines: one object per record, with the trace of the call that logged it.

``meshnode run`` and ``meshnode agent`` use :class:`JsonFormatter` when
``MESHNODE_LOG_FORMAT=json`` (or ``[node] log_format = "json"``); an
application can put it on its own handler. Each line::

    {"time": "2026-01-02T03:04:05.678901Z", "level": "INFO", "logger": "meshnode.node",
     "message": "node: alpha serving ...", "trace_id": "<32 hex>", "span_id": "<16 hex>", ...}

``trace_id``/``span_id`` are there when the record is emitted while a span
is current (inside a traced call: the handler, the authorization decision).
Fields a record carries in ``extra`` (identity events: ``meshnode.svid.serial``,
...) follow; an exception is ``exception`` (the formatted traceback, one
string). An audit record (logger ``meshnode.audit``, see
:mod:`meshnode.authz.audit`) puts its decision fields at the top level
(``peer_id``, ``method``, ``decision``, ``rule``, ``policy``, ...) with a
short ``message``. Values that are not JSON types are written as strings.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from opentelemetry import trace

__all__ = ["AUDIT_FIELDS", "JsonFormatter"]

#: The record attribute an audit record carries its fields in (``extra={AUDIT_FIELDS: {...}}``).
AUDIT_FIELDS = "meshnode_audit"

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        audit = getattr(record, AUDIT_FIELDS, None)
        if isinstance(audit, dict):
            entry["message"] = _audit_message(audit)
            entry.update((k, v) for k, v in audit.items() if k not in ("time", "level", "logger"))
        for key, value in vars(record).items():
            if key not in _STANDARD and key != AUDIT_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


def _audit_message(audit: dict[str, Any]) -> str:
    return f"authz: {audit.get('decision')} {audit.get('peer_id') or 'no identity'} -> {audit.get('method')}"
