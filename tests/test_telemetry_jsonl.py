"""The span file: OTLP/JSON lines written by the real SDK pipeline, read back tolerantly (the older
one-span-per-line format too)."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshnode.telemetry import attributes as attr
from meshnode.telemetry.jsonl import JsonlSpanExporter, read_spans


def _provider(path: Path, service: str, *, batch: bool) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = JsonlSpanExporter(path)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider


@pytest.mark.parametrize("batch", [False, True], ids=["simple", "batch"])
def test_round_trip_keeps_tree_status_events_and_resource(tmp_path: Path, batch: bool) -> None:
    path = tmp_path / "spans.jsonl"
    provider = _provider(path, "alpha", batch=batch)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        root.set_attribute(attr.PEER_SPIFFE_ID, "spiffe://example.org/node/beta")
        root.set_attribute("tags", ("a", "b"))
        with tracer.start_as_current_span("child") as child:
            child.add_event("meshnode.identity.rotated", {attr.SVID_SERIAL: "1f", attr.IDENTITY_GENERATION: 2})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    result = read_spans([path])
    assert result.bad_lines == 0
    by_name = {s.name: s for s in result.spans}
    root_rec, child_rec = by_name["root"], by_name["child"]
    ctx = root.get_span_context()
    assert root_rec.trace_id == format(ctx.trace_id, "032x")
    assert root_rec.span_id == format(ctx.span_id, "016x")
    assert root_rec.parent_span_id is None
    assert child_rec.parent_span_id == root_rec.span_id
    assert child_rec.trace_id == root_rec.trace_id
    assert root_rec.kind == "SERVER" and child_rec.kind == "INTERNAL"
    assert root_rec.attributes == {attr.PEER_SPIFFE_ID: "spiffe://example.org/node/beta", "tags": ["a", "b"]}
    assert (child_rec.status_code, child_rec.status_description) == ("ERROR", "boom")
    assert root_rec.status_code == "UNSET"
    [event] = child_rec.events
    assert event.name == "meshnode.identity.rotated"
    assert event.attributes == {attr.SVID_SERIAL: "1f", attr.IDENTITY_GENERATION: 2}
    assert child_rec.start_ns <= event.time_ns <= child_rec.end_ns
    assert root_rec.start_ns <= child_rec.start_ns <= child_rec.end_ns <= root_rec.end_ns
    assert root_rec.service_name == "alpha"
    assert root_rec.resource["telemetry.sdk.name"] == "opentelemetry"


def test_remote_parent_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = _provider(path, "beta", batch=False)
    remote = trace.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    with provider.get_tracer("t").start_as_current_span(
        "hop", context=trace.set_span_in_context(trace.NonRecordingSpan(remote))
    ):
        pass
    provider.shutdown()
    request = json.loads(path.read_text().splitlines()[0])
    [span] = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert span["traceId"] == f"{0xABC:032x}"
    assert span["parentSpanId"] == f"{0xDEF:016x}"
    assert span["flags"] & 0x300 == 0x300  # SpanFlags: the parent is known to be remote


def test_appends_and_is_one_line_per_span_under_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text("")  # an existing file is appended to, never truncated
    first = _provider(path, "alpha", batch=False)
    first.get_tracer("t").start_span("earlier").end()
    first.shutdown()

    provider = _provider(path, "alpha", batch=False)
    tracer = provider.get_tracer("t")

    def work(n: int) -> None:
        for i in range(50):
            tracer.start_span(f"t{n}-{i}", attributes={"payload": "x" * 500}).end()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    provider.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 * 50  # a simple processor exports one span at a time: one request per line
    assert all(len(json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]) == 1 for line in lines)
    result = read_spans([path])
    assert (len(result.spans), result.bad_lines) == (1 + 4 * 50, 0)


def test_shutdown_is_idempotent_and_export_after_it_fails(tmp_path: Path) -> None:
    exporter = JsonlSpanExporter(tmp_path / "spans.jsonl")
    exporter.shutdown()
    exporter.shutdown()
    assert exporter.export([]) is SpanExportResult.FAILURE


def test_unwritable_path_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        JsonlSpanExporter(tmp_path / "missing-dir" / "spans.jsonl")


def test_reader_skips_and_counts_bad_lines_and_merges_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = _provider(path, "alpha", batch=False)
    with provider.get_tracer("t").start_as_current_span("good"):
        pass
    provider.shutdown()
    good = path.read_text()
    path.write_text(
        "not json\n"
        + good
        + "\n"  # blank lines are not counted
        + '{"name": "no ids"}\n'
        + '{"trace_id": "zz", "span_id": "00", "name": "bad ids", '
        '"start_time_unix_nano": 1, "end_time_unix_nano": 2}\n'
        + "[1, 2, 3]\n"
        + good[: len(good) // 2]  # a line cut short by a crash
    )
    result = read_spans([path, path])  # the same file twice: spans kept once
    assert [s.name for s in result.spans] == ["good"]
    assert result.bad_lines == 2 * 5


def test_reader_raises_for_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_spans([tmp_path / "nope.jsonl"])


def test_a_line_is_an_otlp_export_trace_service_request(tmp_path: Path) -> None:
    """What a collector's otlpjson receiver reads: the OTLP protobuf schema, with hex ids (OTLP/JSON)."""
    json_format = pytest.importorskip("google.protobuf.json_format")
    trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    path = tmp_path / "spans.jsonl"
    provider = _provider(path, "alpha", batch=True)
    tracer = provider.get_tracer("scope-a", "1.2")
    with tracer.start_as_current_span("root", kind=SpanKind.CLIENT, attributes={"n": 7, "ok": True, "x": 0.5}):
        with tracer.start_as_current_span("child") as child:
            child.add_event("e", {"tags": ("a", "b")})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    [line] = path.read_text().splitlines()  # one batch, one request
    request = json.loads(line)
    for resource in request["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # hex in OTLP/JSON; base64 in protobuf's own JSON mapping
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    parsed = json_format.ParseDict(request, trace_service.ExportTraceServiceRequest())
    [resource] = parsed.resource_spans
    assert {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"] == "alpha"
    [scope] = resource.scope_spans
    assert (scope.scope.name, scope.scope.version) == ("scope-a", "1.2")
    spans = {s.name: s for s in scope.spans}
    assert spans["root"].kind == 3 and spans["child"].kind == 1  # SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL
    assert spans["child"].parent_span_id == spans["root"].span_id
    assert (spans["child"].status.code, spans["child"].status.message) == (2, "boom")
    attrs = {a.key: a.value for a in spans["root"].attributes}
    assert (attrs["n"].int_value, attrs["ok"].bool_value, attrs["x"].double_value) == (7, True, 0.5)
    [event] = spans["child"].events
    assert [v.string_value for v in event.attributes[0].value.array_value.values] == ["a", "b"]
    assert spans["root"].start_time_unix_nano <= spans["child"].start_time_unix_nano


OLD_FORMAT_SPAN = {
    "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331", "parent_span_id": None,
    "parent_is_remote": False, "name": "/meshnode.demo.v1.Echo/Say", "kind": "SERVER",
    "start_time_unix_nano": 1_000, "end_time_unix_nano": 2_000,
    "status": {"code": "ERROR", "description": "denied"},
    "attributes": {"meshnode.peer.spiffe_id": "spiffe://example.org/node/alpha", "rpc.grpc.status_code": 7},
    "events": [], "links": [], "resource": {"service.name": "beta"}, "scope": {"name": "t", "version": None},
}


def test_files_in_the_older_one_span_format_are_still_read_also_mixed_with_otlp(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(OLD_FORMAT_SPAN) + "\n")
    provider = _provider(path, "alpha", batch=False)
    with provider.get_tracer("t").start_as_current_span("new"):
        pass
    provider.shutdown()
    result = read_spans([path])
    assert result.bad_lines == 0
    by_name = {s.name: s for s in result.spans}
    old = by_name["/meshnode.demo.v1.Echo/Say"]
    assert (old.trace_id, old.kind, old.status_code, old.service_name) == (
        "0af7651916cd43dd8448eb211c80319c", "SERVER", "ERROR", "beta")
    assert old.attributes["rpc.grpc.status_code"] == 7
    assert by_name["new"].service_name == "alpha"


def test_an_otlp_line_with_one_unreadable_span_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = _provider(path, "alpha", batch=True)
    tracer = provider.get_tracer("t")
    for name in ("a", "b"):
        tracer.start_span(name).end()
    provider.shutdown()
    request = json.loads(path.read_text())
    spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    del spans[0]["spanId"]
    path.write_text(json.dumps(request) + "\n")
    result = read_spans([path])
    assert ([s.name for s in result.spans], result.bad_lines) == ([spans[1]["name"]], 1)
