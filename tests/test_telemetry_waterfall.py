"""``meshnode trace show|list``: a three-node trace exported to three files, drawn as a waterfall."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from meshnode.errors import ConfigError
from meshnode.telemetry import attributes as attr
from meshnode.telemetry.jsonl import JsonlSpanExporter, read_spans
from meshnode.telemetry.traces import group_traces, pick_trace
from meshnode.telemetry.waterfall import abbreviate_spiffe_id, render_trace

ALPHA = "spiffe://example.org/ns/prod/sa/alpha"
BETA = "spiffe://example.org/ns/prod/sa/beta"
GAMMA = "spiffe://example.org/ns/prod/sa/gamma"
CLI = [sys.executable, "-c", "import sys; from meshnode.cli import main; sys.exit(main())"]


class Node:
    """One service exporting to its own file, like a node with [telemetry] exporter = "jsonl"."""

    def __init__(self, name: str, path: Path) -> None:
        self.path = path
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}))
        self.provider.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(path)))
        self.tracer = self.provider.get_tracer("test")

    @contextmanager
    def call(self, method: str, peer: str) -> Iterator[trace.SpanContext]:
        """A client span; yields the context the callee receives in its metadata."""
        with self.tracer.start_as_current_span(
            method, kind=SpanKind.CLIENT, attributes={attr.PEER_SPIFFE_ID: peer}
        ) as s:
            ctx = s.get_span_context()
            yield trace.SpanContext(ctx.trace_id, ctx.span_id, is_remote=True, trace_flags=ctx.trace_flags)

    @contextmanager
    def serve(self, method: str, caller: trace.SpanContext, peer: str, code: int = 0) -> Iterator[None]:
        """A server span whose parent is the remote caller's client span."""
        parent = trace.set_span_in_context(trace.NonRecordingSpan(caller))
        attrs: dict[str, str | int] = {attr.PEER_SPIFFE_ID: peer, "rpc.grpc.status_code": code}
        with self.tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER, attributes=attrs):
            yield


@dataclass
class Mesh:
    files: list[Path]
    trace_id: str
    earlier_trace_id: str


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    alpha, beta, gamma = (Node(n, tmp_path / f"{n}.jsonl") for n in ("alpha", "beta", "gamma"))
    with alpha.tracer.start_as_current_span("warm-up") as early:  # an older one-span trace
        pass
    with alpha.tracer.start_as_current_span("checkout") as root:
        with alpha.call("/shop.v1.Cart/Checkout", BETA) as hop1:
            with beta.serve("/shop.v1.Cart/Checkout", hop1, ALPHA):
                with beta.call("/shop.v1.Stock/Reserve", GAMMA) as hop2:
                    with gamma.serve("/shop.v1.Stock/Reserve", hop2, BETA):
                        pass
                with beta.call("/shop.v1.Pay/Charge", GAMMA) as hop3:
                    with gamma.serve("/shop.v1.Pay/Charge", hop3, BETA, code=7):
                        pass
    for node in (alpha, beta, gamma):
        node.provider.shutdown()
    return Mesh(
        [alpha.path, beta.path, gamma.path],
        format(root.get_span_context().trace_id, "032x"),
        format(early.get_span_context().trace_id, "032x"),
    )


def _body(text: str) -> list[str]:
    """The span lines (after the two header lines)."""
    return text.splitlines()[2:]


def test_three_files_merge_into_one_tree(mesh: Mesh) -> None:
    traces = group_traces(read_spans(mesh.files).spans)
    assert [t.trace_id for t in traces] == [mesh.earlier_trace_id, mesh.trace_id]
    chosen = pick_trace(traces)  # the most recent
    assert chosen.trace_id == mesh.trace_id
    assert chosen.services == ("alpha", "beta", "gamma")
    assert chosen.root.name == "checkout"
    text = render_trace(chosen, width=160)
    assert text.splitlines()[0].startswith(f"trace {mesh.trace_id}  7 spans  3 nodes (alpha, beta, gamma)  ")
    # Each level indents the name by three more columns.
    body = _body(text)
    starts = [len(line) - len(line.lstrip(" │├└─")) for line in body]
    assert starts == [0, 3, 6, 9, 12, 9, 12]
    assert [r.depth for r in chosen.rows()] == [0, 1, 2, 3, 4, 3, 4]
    assert "?" not in text


def test_exact_layout(mesh: Mesh) -> None:
    text = render_trace(pick_trace(group_traces(read_spans(mesh.files).spans)), width=160)
    body = _body(text)
    expected = [
        ("checkout", "alpha", "-", "OK"),
        ("└─ /shop.v1.Cart/Checkout", "alpha", "example.org/ns/prod/sa/beta", "OK"),
        ("   └─ /shop.v1.Cart/Checkout", "beta", "example.org/ns/prod/sa/alpha", "OK"),
        ("      ├─ /shop.v1.Stock/Reserve", "beta", "example.org/ns/prod/sa/gamma", "OK"),
        ("      │  └─ /shop.v1.Stock/Reserve", "gamma", "example.org/ns/prod/sa/beta", "OK"),
        ("      └─ /shop.v1.Pay/Charge", "beta", "example.org/ns/prod/sa/gamma", "OK"),
        ("         └─ /shop.v1.Pay/Charge", "gamma", "example.org/ns/prod/sa/beta", "PERMISSION_DENIED"),
    ]
    assert len(body) == len(expected)
    for line, (name, node, peer, status) in zip(body, expected, strict=True):
        assert line.startswith(name + " ")
        cells = line[len(name) :].split()
        assert cells[:3] == [node, peer, status], line
        assert cells[4] == "ms" and float(cells[3]) >= 0
        assert set(cells[5]) == {"█"}


def test_bars_sit_on_the_timeline(mesh: Mesh) -> None:
    text = render_trace(pick_trace(group_traces(read_spans(mesh.files).spans)), width=160)
    bars = [(line.index("█"), line.rindex("█")) for line in _body(text)]
    root_lo, root_hi = bars[0]
    for lo, hi in bars[1:]:
        assert root_lo <= lo <= hi <= root_hi
    # Gamma's Reserve ends before beta calls Pay: its bar starts no later than Pay's.
    assert bars[4][0] <= bars[5][0]


def test_missing_caller_file_makes_orphans(mesh: Mesh) -> None:
    spans = read_spans(mesh.files[1:]).spans  # beta and gamma only
    trace_ = pick_trace(group_traces(spans), mesh.trace_id[:8])
    body = _body(render_trace(trace_, width=160))
    assert body[0].startswith("? /shop.v1.Cart/Checkout ")
    assert body[1].startswith("  ├─ /shop.v1.Stock/Reserve ")
    assert render_trace(trace_).rstrip().endswith("(exported by another node, or not yet)")


def test_pick_trace_errors_name_the_available_ids(mesh: Mesh) -> None:
    traces = group_traces(read_spans(mesh.files).spans)
    with pytest.raises(ConfigError) as info:
        pick_trace(traces, "f" * 32 if not mesh.trace_id.startswith("f") else "0" * 32)
    assert mesh.trace_id in str(info.value) and mesh.earlier_trace_id in str(info.value)
    assert pick_trace(traces, mesh.trace_id.upper()).trace_id == mesh.trace_id


def test_colour_only_when_asked(mesh: Mesh) -> None:
    chosen = pick_trace(group_traces(read_spans(mesh.files).spans))
    assert "\x1b[" not in render_trace(chosen)
    coloured = render_trace(chosen, color=True)
    assert "\x1b[31mPERMISSION_DENIED" in coloured


def test_ascii_fallback(mesh: Mesh) -> None:
    text = render_trace(pick_trace(group_traces(read_spans(mesh.files).spans)), width=160, ascii_only=True)
    assert text.isascii()
    assert _body(text)[4].startswith("      |  `- /shop.v1.Stock/Reserve ")


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (60, "example.org/ns/prod/sa/beta"),
        (22, "example.org/…/sa/beta"),
        (18, "example.org/…/beta"),
        (12, "…/sa/beta"),
        (6, "…/beta"),
    ],
)
def test_abbreviate_keeps_the_workload_end(width: int, expected: str) -> None:
    assert abbreviate_spiffe_id(BETA, width) == expected
    assert len(abbreviate_spiffe_id(BETA, width)) <= width


# -- the command ------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "trace", *args], capture_output=True, text=True, timeout=60, check=False)


def test_cli_show_draws_the_most_recent_trace(mesh: Mesh) -> None:
    done = _run("show", *map(str, mesh.files), "--width", "150", "--no-color")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"trace {mesh.trace_id}  7 spans  3 nodes")
    assert lines[2].startswith("checkout ")
    assert any(line.startswith("         └─ /shop.v1.Pay/Charge ") and "PERMISSION_DENIED" in line for line in lines)
    assert "example.org/ns/prod/sa/gamma" in done.stdout
    assert "most recent of 2 traces" in lines[-1]
    assert "\x1b[" not in done.stdout


def test_cli_show_picks_by_id_prefix(mesh: Mesh) -> None:
    done = _run("show", *map(str, mesh.files), "--trace-id", mesh.earlier_trace_id[:10])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(f"trace {mesh.earlier_trace_id}  1 span  1 node (alpha)")
    assert done.stdout.splitlines()[2].startswith("warm-up ")


def test_cli_list(mesh: Mesh) -> None:
    done = _run("list", *map(str, mesh.files))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["TRACE", "ID"]
    assert lines[1].startswith(mesh.trace_id) and lines[1].endswith("checkout (alpha)")
    assert lines[1].split()[3:5] == ["7", "3"]
    assert lines[2].startswith(mesh.earlier_trace_id) and lines[2].endswith("warm-up (alpha)")


def test_cli_unknown_trace_id_lists_what_there_is(mesh: Mesh) -> None:
    done = _run("show", *map(str, mesh.files), "--trace-id", "0123456789abcdef0123456789abcdeg")
    assert done.returncode == 2
    assert done.stderr.startswith("meshnode: trace: no trace '0123456789abcdef0123456789abcdeg' in the files")
    assert mesh.trace_id in done.stderr and mesh.earlier_trace_id in done.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    done = _run("show", str(tmp_path / "absent.jsonl"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"meshnode: trace: cannot read {tmp_path / 'absent.jsonl'}: No such file or directory"
    assert done.stdout == ""


def test_cli_file_without_spans(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"hello": "world"}\nnot json\n')
    done = _run("show", str(junk))
    assert done.returncode == 1
    assert "skipped 2 line(s) that are not spans" in done.stderr
    assert f"meshnode: trace: no spans in {junk}" in done.stderr
