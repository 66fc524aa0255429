"""OTLP/JSON: finished spans as an ``ExportTraceServiceRequest`` JSON object, and back.

This is the JSON encoding of the OpenTelemetry protocol, as the
OpenTelemetry Collector's ``file`` exporter writes it and its ``otlpjson``
file receiver reads it: ``resourceSpans`` -> ``scopeSpans`` -> ``spans``,
camelCase keys, trace and span ids as hex strings, enums as numbers,
64-bit integers (timestamps, ``intValue``) as decimal strings, attributes
as ``[{"key": ..., "value": {"stringValue": ...}}]``.

:func:`encode_spans` makes one request from a batch of SDK spans (grouped
by resource and instrumentation scope); :func:`decode_request` turns one
back into flat per-span dicts (the shape :class:`meshnode.telemetry.jsonl.SpanRecord`
reads). Decoding is tolerant of what the protobuf JSON mapping also allows
(enum names, numbers for 64-bit integers); a span it cannot use is skipped
and counted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import format_span_id, format_trace_id

__all__ = ["decode_request", "encode_spans", "is_request"]

_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUS = ("UNSET", "OK", "ERROR")
_HAS_IS_REMOTE = 0x100  # SpanFlags: the parent's is_remote is known...
_IS_REMOTE = 0x200  # ...and is true


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    return {"stringValue": str(value)}


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in (attributes or {}).items()]


def _span(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    out: dict[str, Any] = {
        "traceId": format_trace_id(ctx.trace_id) if ctx else "",
        "spanId": format_span_id(ctx.span_id) if ctx else "",
    }
    flags = int(ctx.trace_flags) if ctx else 0
    if span.parent is not None:
        out["parentSpanId"] = format_span_id(span.parent.span_id)
        flags |= _HAS_IS_REMOTE | (_IS_REMOTE if span.parent.is_remote else 0)
    out.update({
        "flags": flags,
        "name": span.name,
        "kind": span.kind.value + 1,  # the API's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL is 1
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
        "events": [
            {"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
            for e in span.events
        ],
        "links": [
            {"traceId": format_trace_id(link.context.trace_id), "spanId": format_span_id(link.context.span_id),
             "attributes": _attributes(link.attributes)}
            for link in span.links
        ],
        "status": {"code": span.status.status_code.value, **(
            {"message": span.status.description} if span.status.description else {}
        )},
    })
    return out


def encode_spans(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` holding ``spans``, grouped by resource and scope."""
    resources: dict[int, tuple[Any, dict[tuple[str, str | None, str | None], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = resources.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version, scope.schema_url) if scope else ("", None, None)
        scopes.setdefault(key, []).append(_span(span))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": {"name": name, **({"version": version} if version else {})},
                     "spans": encoded, **({"schemaUrl": schema} if schema else {})}
                    for (name, version, schema), encoded in scopes.items()
                ],
                **({"schemaUrl": resource.schema_url} if resource.schema_url else {}),
            }
            for resource, scopes in resources.values()
        ]
    }


def is_request(obj: Any) -> bool:
    """Whether a decoded JSON line is an OTLP/JSON trace request (else: meshnode's older one-span line)."""
    return isinstance(obj, dict) and "resourceSpans" in obj


def _decode_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    kind, inner = next(iter(value.items()))
    if kind == "intValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)
    if kind == "arrayValue":
        return [_decode_value(v) for v in (inner or {}).get("values") or ()]
    if kind == "kvlistValue":
        return _decode_attributes((inner or {}).get("values"))
    return inner  # stringValue, boolValue, bytesValue


def _decode_attributes(items: Any) -> dict[str, Any]:
    return {str(item["key"]): _decode_value(item.get("value")) for item in items or ()}


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> str:
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str) and value.removeprefix(prefix) in names:
        return value.removeprefix(prefix)
    return names[0]


def _flat(span: Mapping[str, Any], resource: dict[str, Any], scope: Mapping[str, Any]) -> dict[str, Any]:
    status = span.get("status") or {}
    kind = _enum(span.get("kind"), _KINDS, "SPAN_KIND_")
    return {
        "trace_id": span["traceId"],
        "span_id": span["spanId"],
        "parent_span_id": span.get("parentSpanId") or None,
        "name": span["name"],
        "kind": "INTERNAL" if kind == "UNSPECIFIED" else kind,
        "start_time_unix_nano": int(span["startTimeUnixNano"]),
        "end_time_unix_nano": int(span["endTimeUnixNano"]),
        "status": {"code": _enum(status.get("code"), _STATUS, "STATUS_CODE_"), "description": status.get("message")},
        "attributes": _decode_attributes(span.get("attributes")),
        "events": [
            {"name": e["name"], "time_unix_nano": int(e.get("timeUnixNano") or 0),
             "attributes": _decode_attributes(e.get("attributes"))}
            for e in span.get("events") or ()
        ],
        "resource": resource,
        "scope": {"name": scope.get("name"), "version": scope.get("version")},
    }


def decode_request(obj: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The spans of one request as flat dicts, and how many spans in it could not be read."""
    spans: list[dict[str, Any]] = []
    bad = 0
    for resource_spans in _list(obj.get("resourceSpans")):
        try:
            resource = _decode_attributes((resource_spans.get("resource") or {}).get("attributes"))
            scope_spans = _list(resource_spans.get("scopeSpans"))
        except (AttributeError, KeyError, TypeError, ValueError):
            bad += 1
            continue
        for group in scope_spans:
            for span in _list(group.get("spans") if isinstance(group, dict) else None):
                try:
                    spans.append(_flat(span, resource, group.get("scope") or {}))
                except (AttributeError, KeyError, TypeError, ValueError):
                    bad += 1
    return spans, bad


def _list(value: Any) -> Iterable[Any]:
    return value if isinstance(value, list) else ()
