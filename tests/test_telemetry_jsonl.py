"""The JSON-lines span file: written by the real SDK pipeline, read back tolerantly."""

from __future__ import annotations

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
    line = json.loads(path.read_text().splitlines()[0])
    assert line["trace_id"] == f"{0xABC:032x}"
    assert line["parent_span_id"] == f"{0xDEF:016x}"
    assert line["parent_is_remote"] is True


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
    assert len(lines) == 1 + 4 * 50
    assert all(json.loads(line)["name"] for line in lines)
    assert read_spans([path]).bad_lines == 0


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
