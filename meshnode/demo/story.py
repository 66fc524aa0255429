"""``meshnode demo``: the whole story on one terminal page.

Starts the dev agent and alpha, beta, gamma as separate processes, then:
identities, a relay call client -> alpha -> beta -> gamma with each hop's
verified caller, a call the policy denies (and why), live rotation of every
SVID and of the CA under load with the count of failed calls, the trace of
the relay call as a waterfall, and a summary. Exit status 0 when every check
held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshnode.config.node import node_config_from_dict
from meshnode.demo.mesh import CLIENT_ID, NODES, LocalMesh, MeshError, node_id
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.errors import MeshnodeError
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509svid import uri_sans
from meshnode.node import Node
from meshnode.probe import server_certificate
from meshnode.telemetry.jsonl import JsonlSpanExporter, read_spans
from meshnode.telemetry.traces import group_traces, pick_trace
from meshnode.telemetry.waterfall import render_trace

__all__ = ["Report", "client_node", "run_demo"]


@dataclass
class Report:
    out: Callable[[str], None] = print
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.out("")
        self.out(f"== {title}")

    def line(self, text: str = "") -> None:
        self.out(f"   {text}")

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append((name, ok, detail))
        self.line(f"[{'ok' if ok else 'FAILED'}] {name}: {detail}")
        return ok


def client_node(mesh: LocalMesh, source: WorkloadApiSource, tracer_provider: TracerProvider | None) -> Node:
    """The demo client: a node with no services, the client identity, and alpha and gamma as peers."""
    config = node_config_from_dict(
        {
            "node": {"name": "client", "listen": "127.0.0.1:0", "peer_verify": mesh.verify},
            "identity": {"source": "workload-api", "trust_domain": "example.org"},
            "peers": {p: {"address": mesh.address(p), "spiffe_id": node_id(p)} for p in ("alpha", "gamma")},
        },
        environ={},
    )
    return Node(config, source=source, tracer_provider=tracer_provider)


def _dns_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.DNSName))


def _serials(mesh: LocalMesh) -> dict[str, tuple[int, str]]:
    out = {}
    for name in NODES:
        cert = server_certificate(mesh.address(name))
        out[name] = (cert.serial_number, cert.issuer.rfc4514_string())
    return out


async def _identities(mesh: LocalMesh, report: Report) -> None:
    report.section("1. identities (from the dev Workload API agent, verified in every handshake)")
    for name in NODES:
        cert = await asyncio.to_thread(server_certificate, mesh.address(name))
        sans = ", ".join(uri_sans(cert))
        dns = _dns_sans(cert)
        report.line(f"{name:<6} {mesh.address(name):<16} {sans:<34} DNS SANs: {', '.join(dns) or 'none'}"[:118])
    report.line(f"{'client':<6} {'(no port)':<16} {CLIENT_ID}")
    how = ("the exact SPIFFE ID (embedded xDS control plane; no DNS SAN needed)" if mesh.verify == "spiffe-id"
           else "the DNS name mapped from the SPIFFE ID")
    report.line(f"nodes verify the servers they call by {how}")


async def _relay(client: Node, tracer: TracerProvider, report: Report) -> str:
    report.section("2. relay: client -> alpha -> beta -> gamma")
    with tracer.get_tracer("meshnode.demo").start_as_current_span("demo: relay") as root:
        reply = await client.stub("alpha", demo_pb2_grpc.RelayStub).Forward(
            demo_pb2.ForwardRequest(text="hello mesh", route=["beta", "gamma"]), timeout=10
        )
    expected = [("alpha", CLIENT_ID), ("beta", node_id("alpha")), ("gamma", node_id("beta"))]
    for i, hop in enumerate(reply.hops, 1):
        report.line(f"hop {i}  {hop.node:<6} {hop.spiffe_id:<34} verified caller {hop.caller}")
    got = [(h.node, h.caller) for h in reply.hops]
    report.check("relay", got == expected and all(h.spiffe_id == node_id(h.node) for h in reply.hops),
                 f"{len(reply.hops)} hops, every caller verified by mTLS")
    return format(root.get_span_context().trace_id, "032x")


async def _denied(mesh: LocalMesh, client: Node, report: Report) -> None:
    report.section("3. a call the policy denies: client -> gamma Echo/Say")
    try:
        await client.stub("gamma", demo_pb2_grpc.EchoStub).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
        report.check("denial", False, "gamma answered a caller its policy does not allow")
        return
    except grpc.aio.AioRpcError as err:
        report.line(f"{err.code().name}: {err.details()}")
        ok = err.code() == grpc.StatusCode.PERMISSION_DENIED
    report.line("why (meshnode policy explain gamma-policy.json):")
    explain = subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "policy", "explain", str(mesh.root / "gamma-policy.json"),
         "--peer", CLIENT_ID, "--method", "/meshnode.demo.v1.Echo/Say"],
        capture_output=True, text=True, timeout=30,
    )
    for text in explain.stdout.strip().splitlines():
        report.line("  " + text)
    report.check("denial", ok and explain.returncode == 1, "PERMISSION_DENIED before the handler ran")


async def _rotation(mesh: LocalMesh, client: Node, report: Report, rotations: int) -> None:
    report.section(f"4. live rotation: {rotations} SVID rotations and 1 CA rotation under load")
    before = await asyncio.to_thread(_serials, mesh)
    stub = client.stub("alpha", demo_pb2_grpc.RelayStub)
    stop = asyncio.Event()
    calls, failures = 0, []

    async def caller() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                await stub.Forward(demo_pb2.ForwardRequest(text="load", route=["beta", "gamma"]), timeout=10)
                calls += 1
            except grpc.aio.AioRpcError as err:
                failures.append(f"{err.code().name}: {err.details()}")

    tasks = [asyncio.ensure_future(caller()) for _ in range(3)]
    started = time.monotonic()
    try:
        for i in range(rotations):
            await asyncio.sleep(0.3)
            mesh.signal_agent(signal.SIGUSR2 if i == rotations // 2 else signal.SIGUSR1)
            if i == rotations // 2:
                await asyncio.sleep(2.5)  # the new CA enters every bundle first, then signs (ca_overlap)
        await asyncio.sleep(2.0)  # let the last rotation reach every node
    finally:
        # also when the demo is interrupted: a cancelled call surfaces as a CANCELLED RpcError,
        # which the callers would count and retry forever
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    after = await asyncio.to_thread(_serials, mesh)
    for name in NODES:
        report.line(f"{name:<6} serial {before[name][0]:x} -> {after[name][0]:x}")
    report.line(f"{calls} relay calls (3 hops each) in {elapsed:.1f} s, {len(failures)} failed")
    for failure in failures[:3]:
        report.line(f"  failed: {failure}")
    report.check("rotation", not failures and calls > 0, f"{len(failures)} failed calls")
    changed = all(before[n][0] != after[n][0] for n in NODES)
    new_ca = all(before[n][1] != after[n][1] for n in NODES)
    report.check("new SVIDs in use", changed and new_ca,
                 "every node serves a new SVID from the new CA" if changed and new_ca
                 else "some node still presents an old SVID or CA")


async def _trace(mesh: LocalMesh, trace_id: str, report: Report) -> None:
    report.section("5. the relay call as one trace (meshnode trace show traces/*.jsonl)")
    deadline = time.monotonic() + 10
    while True:
        spans = [s for s in read_spans(mesh.trace_files()).spans if s.trace_id == trace_id]
        if len(spans) >= 7 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    trace = pick_trace(group_traces(spans), trace_id)
    for text in render_trace(trace, width=118, color=sys.stdout.isatty()).splitlines():
        report.line(text)
    nodes = {s.resource.get("service.name") for s in spans}
    report.check("trace", len(spans) >= 7 and {"client", *NODES} <= nodes,
                 f"{len(spans)} spans from {len(nodes)} processes in one trace")


async def run_demo(*, verify: str = "spiffe-id", rotations: int = 6, keep_running: bool = False,
                   workdir: Path | None = None, out: Callable[[str], None] = print) -> int:
    """The narrated demo; its work dir (``workdir``, or a new one in /tmp) is kept for its traces."""
    report = Report(out)
    out(f"meshnode demo: three nodes on the dev agent, peer verification mode: {verify}")
    mesh = LocalMesh(verify=verify, workdir=workdir, keep=keep_running)
    try:
        started = time.monotonic()
        source = None
        try:
            ready = await asyncio.to_thread(mesh.start)
            up = time.monotonic() - started
            out(f"   work dir {mesh.root}; agent and {len(NODES)} nodes up in {up:.1f} s")
            del ready
            source = await asyncio.to_thread(WorkloadApiSource, mesh.socket("client"), timeout=10)
            tracer = TracerProvider(resource=Resource.create({"service.name": "client"}))
            exporter = JsonlSpanExporter(mesh.root / "traces" / "client.jsonl")
            tracer.add_span_processor(SimpleSpanProcessor(exporter))
            async with client_node(mesh, source, tracer) as client:
                await _identities(mesh, report)
                trace_id = await _relay(client, tracer, report)
                await _denied(mesh, client, report)
                await _rotation(mesh, client, report, rotations)
            tracer.shutdown()
            await _trace(mesh, trace_id, report)
        except MeshnodeError as exc:
            report.check("mesh", False, str(exc))
        finally:
            if source is not None:
                source.close()
        if keep_running and all(ok for _, ok, _ in report.checks):
            await _keep_running(mesh, out)
        codes = mesh.close()
    finally:
        mesh.close()  # idempotent: an unexpected error or a signal must not leave processes behind
    report.section("summary")
    clean = all(code == 0 for code in codes.values())
    report.check("clean shutdown", clean, ", ".join(f"{n} exit {c}" for n, c in codes.items()))
    ok = all(ok for _, ok, _ in report.checks)
    report.line(f"{sum(1 for _, o, _ in report.checks if o)}/{len(report.checks)} checks held in "
                f"{time.monotonic() - started:.1f} s: " + ("everything held" if ok else "SOMETHING FAILED"))
    out("")
    out(f"the work dir stays (traces, logs, configs; no keys): {mesh.root}")
    out(f"   meshnode trace show {mesh.root}/traces/*.jsonl")
    return 0 if ok else 1


async def _keep_running(mesh: LocalMesh, out: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ending = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in ending}
    for sig in ending:  # before the prompt: a Ctrl-C right after it must end the demo cleanly too
        loop.add_signal_handler(sig, stop.set)
    try:
        _print_commands(mesh, out)
        while all(mesh.alive().values()) and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        for sig in ending:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
    if stop.is_set():  # Ctrl-C is how the user was told to end it: stop and clean up, not a failure
        out("")
        mesh.keep = False


def _print_commands(mesh: LocalMesh, out: Callable[[str], None]) -> None:
    agent_pid = mesh.procs["agent"].pid
    r = mesh.root
    out("")
    out("== the mesh keeps running; poke it from another terminal (Ctrl-C here stops it):")
    for cmd in (
        f"meshnode demo call --workdir {r}                      # relay client -> alpha -> beta -> gamma",
        f"SPIFFE_ENDPOINT_SOCKET={mesh.socket('alpha')} meshnode svid",
        f"meshnode check {r / 'alpha.toml'}",
        f"meshnode policy explain --config {r / 'gamma.toml'} --peer {CLIENT_ID} --method /meshnode.demo.v1.Echo/Say",
        f"kill -USR1 {agent_pid}   # rotate every SVID;   kill -USR2 {agent_pid}   # rotate the CA",
        f"meshnode trace show {r}/traces/*.jsonl",
        "meshnode top " + " ".join(mesh.metrics[n] for n in NODES if n in mesh.metrics)
        + "   # calls/s, success, latency, denials per method and caller",
    ):
        out(f"   {cmd}")


async def call_once(workdir: Path, route: list[str], verify: str) -> int:
    """``meshnode demo call``: one relay call through a running demo mesh.

    The call is traced: its client span is the root of the trace, written to
    ``traces/client.jsonl`` next to the nodes' files, so ``meshnode trace show``
    draws the whole call.
    """
    try:
        ports = {name: int(port) for name, port in json.loads((workdir / "ports.json").read_text()).items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise MeshError(f"demo: {workdir} holds no running mesh (ports.json: {exc}); start one with "
                        "`meshnode demo --keep-running`") from None
    mesh = LocalMesh(verify=verify, workdir=workdir, keep=True, ports=ports)
    source = await asyncio.to_thread(WorkloadApiSource, mesh.socket("client"), timeout=5)
    tracer = TracerProvider(resource=Resource.create({"service.name": "client"}))
    tracer.add_span_processor(SimpleSpanProcessor(JsonlSpanExporter(mesh.root / "traces" / "client.jsonl")))
    sent = InMemorySpanExporter()  # to name the call's trace
    tracer.add_span_processor(SimpleSpanProcessor(sent))
    try:
        async with client_node(mesh, source, tracer) as client:
            try:
                reply = await client.stub("alpha", demo_pb2_grpc.RelayStub).Forward(
                    demo_pb2.ForwardRequest(text="poke", route=route), timeout=10
                )
            except grpc.aio.AioRpcError as err:
                print(f"meshnode demo call: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1
        for i, hop in enumerate(reply.hops, 1):
            print(f"hop {i}  {hop.node:<6} {hop.spiffe_id:<34} verified caller {hop.caller}")
        for span in sent.get_finished_spans():
            if span.parent is None and span.context is not None:
                trace_id = format(span.context.trace_id, "032x")
                print(f"trace {trace_id}: meshnode trace show --trace-id {trace_id} {mesh.root}/traces/*.jsonl")
    finally:
        tracer.shutdown()
        source.close()
    return 0

