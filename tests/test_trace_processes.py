"""Across processes: three `meshnode run` nodes export JSON lines; the merged spans
form one trace, and `meshnode trace show` draws it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from meshnode.demo.mesh import LocalMesh
from meshnode.demo.story import client_node
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.telemetry.jsonl import JsonlSpanExporter, read_spans


@pytest.mark.slow
async def test_three_run_processes_make_one_trace_that_trace_show_draws() -> None:
    with LocalMesh(verify="dns") as mesh:
        await asyncio.to_thread(mesh.start)
        source = await asyncio.to_thread(WorkloadApiSource, mesh.socket("client"), timeout=10)
        tracer = TracerProvider(resource=Resource.create({"service.name": "client"}))
        tracer.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(mesh.root / "traces" / "client.jsonl")))
        try:
            async with client_node(mesh, source, tracer) as client:
                with tracer.get_tracer("test").start_as_current_span("relay") as root:
                    await client.stub("alpha", demo_pb2_grpc.RelayStub).Forward(
                        demo_pb2.ForwardRequest(text="x", route=["beta", "gamma"]), timeout=10)
            trace_id = format(root.get_span_context().trace_id, "032x")
        finally:
            source.close()
            tracer.shutdown()
        files = [str(p) for p in mesh.trace_files()]
        deadline = time.monotonic() + 10
        while len([s for s in read_spans(files).spans if s.trace_id == trace_id]) < 7:
            assert time.monotonic() < deadline, "the nodes did not export their spans"
            await asyncio.sleep(0.1)
            files = [str(p) for p in mesh.trace_files()]
        spans = [s for s in read_spans(files).spans if s.trace_id == trace_id]
        by_id = {s.span_id: s for s in spans}
        roots = [s for s in spans if s.parent_span_id not in by_id]
        assert len(roots) == 1 and roots[0].name == "relay"
        assert {s.resource["service.name"] for s in spans} == {"client", "alpha", "beta", "gamma"}
        proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "trace", "show", *files, "--trace-id", trace_id,
                               "--no-color", "--width", "140"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert f"trace {trace_id}" in lines[0] and "7 spans" in lines[0]
        body = "\n".join(lines[2:])
        for node in ("alpha", "beta", "gamma"):
            assert f" {node} " in body
        # server spans name the verified caller; the deepest is gamma's, called by beta
        assert "example.org/node/beta" in lines[-1] and " gamma " in lines[-1]
