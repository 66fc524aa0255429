"""Traced RPCs between mesh nodes: one trace across three hops, identities on
every span, denied calls traced, sync handlers work under tracing."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshnode.authz import peer_id
from meshnode.demo import EchoService, RelayService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.service import NodeService
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.grpc_js_client import call_echo
from tests.support.nodes import node_config, peer

TD = "spiffe://example.org/node/"
ALPHA, BETA, GAMMA, CLIENT = TD + "alpha", TD + "beta", TD + "gamma", "spiffe://example.org/demo/client"


def provider(name: str, exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": name}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def by_kind(spans: list[ReadableSpan], kind: SpanKind, service: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind and s.resource.attributes["service.name"] == service]


async def test_three_hops_are_one_trace_with_identities_on_every_span() -> None:
    ca = DevCA("example.org")
    exporter = InMemorySpanExporter()
    services = lambda: [EchoService(), RelayService()]  # noqa: E731
    gamma = Node(node_config("gamma", allow=[BETA]), services=services(), source=ManualSource(ca, GAMMA),
                 tracer_provider=provider("gamma", exporter))
    async with gamma:
        beta = Node(node_config("beta", allow=[ALPHA], peers={"gamma": peer(gamma.port, GAMMA)}),
                    services=services(), source=ManualSource(ca, BETA), tracer_provider=provider("beta", exporter))
        async with beta:
            alpha = Node(node_config("alpha", allow=[CLIENT], peers={"beta": peer(beta.port, BETA)}),
                         services=services(), source=ManualSource(ca, ALPHA),
                         tracer_provider=provider("alpha", exporter))
            async with alpha:
                client = Node(node_config("client", peers={"alpha": peer(alpha.port, ALPHA),
                                                           "gamma": peer(gamma.port, GAMMA)}),
                              source=ManualSource(ca, CLIENT), tracer_provider=provider("client", exporter))
                async with client:
                    reply = await client.stub("alpha", demo_pb2_grpc.RelayStub).Forward(
                        demo_pb2.ForwardRequest(text="hi", route=["beta", "gamma"]), timeout=10)
                    assert [h.node for h in reply.hops] == ["alpha", "beta", "gamma"]
                    with pytest.raises(grpc.aio.AioRpcError) as denied:
                        await client.stub("gamma", demo_pb2_grpc.EchoStub).Say(demo_pb2.SayRequest(text="x"))
                    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    spans = exporter.get_finished_spans()
    forward = [s for s in spans if s.name == "/meshnode.demo.v1.Relay/Forward"]
    assert len({s.context.trace_id for s in forward}) == 1, "the relay call must be one trace"
    by_id = {s.context.span_id: s for s in forward}
    # client -> alpha(server) -> alpha(client) -> beta(server) -> beta(client) -> gamma(server)
    chain = [
        ("client", SpanKind.CLIENT), ("alpha", SpanKind.SERVER), ("alpha", SpanKind.CLIENT),
        ("beta", SpanKind.SERVER), ("beta", SpanKind.CLIENT), ("gamma", SpanKind.SERVER),
    ]
    spans_in_order = []
    for service, kind in chain:
        (span,) = by_kind(forward, kind, service)
        spans_in_order.append(span)
    for parent, child in itertools.pairwise(spans_in_order):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert child.parent.span_id in by_id
    expected_server = {"alpha": (ALPHA, CLIENT), "beta": (BETA, ALPHA), "gamma": (GAMMA, BETA)}
    for span in spans_in_order:
        attrs = span.attributes or {}
        service = span.resource.attributes["service.name"]
        if span.kind == SpanKind.SERVER:
            local, caller = expected_server[service]
            assert attrs["meshnode.local.spiffe_id"] == local
            assert attrs["meshnode.peer.spiffe_id"] == caller
            assert attrs["meshnode.authz.decision"] == "allow"
            assert attrs["meshnode.authz.rule"]
        else:
            assert attrs["meshnode.local.spiffe_id"] in (ALPHA, BETA, CLIENT)
            assert attrs["meshnode.peer.spiffe_id"] in (ALPHA, BETA, GAMMA)
            assert attrs["rpc.system"] == "grpc"
    (denied_span,) = [s for s in by_kind(spans, SpanKind.SERVER, "gamma") if s.name.endswith("/Say")]
    assert denied_span.attributes["meshnode.authz.decision"] == "deny"
    assert denied_span.attributes["meshnode.peer.spiffe_id"] == CLIENT
    assert denied_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


class SyncEcho(NodeService, demo_pb2_grpc.EchoServicer):
    """Plain def handlers: they run on the node's thread pool."""

    def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        if request.text == "abort":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to abort")
        return demo_pb2.SayReply(text=request.text, caller=str(peer_id()), server=str(self.node.spiffe_id))

    def SayStream(self, request: demo_pb2.SayRequest, context: Any) -> Iterator[demo_pb2.SayReply]:
        for word in request.text.split():
            yield demo_pb2.SayReply(text=word, caller=str(peer_id()))


@pytest.mark.parametrize("traced", [False, True])
async def test_sync_handlers_work_with_and_without_tracing(traced: bool) -> None:
    ca = DevCA("example.org")
    exporter = InMemorySpanExporter()
    tp = provider("beta", exporter) if traced else None
    async with Node(node_config("beta", allow=[ALPHA]), services=[SyncEcho()], source=ManualSource(ca, BETA),
                    tracer_provider=tp) as beta:
        async with Node(node_config("alpha", peers={"beta": peer(beta.port, BETA)}),
                        source=ManualSource(ca, ALPHA)) as alpha:
            stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)
            reply = await stub.Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert (reply.caller, reply.server) == (ALPHA, BETA)
            words = [r.text async for r in stub.SayStream(demo_pb2.SayRequest(text="a b c"), timeout=5)]
            assert words == ["a", "b", "c"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Say(demo_pb2.SayRequest(text="abort"), timeout=5)
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == "asked to abort"
    if traced:
        names = sorted(s.name for s in exporter.get_finished_spans())
        assert names.count("/meshnode.demo.v1.Echo/Say") == 2
        assert all(s.attributes["meshnode.peer.spiffe_id"] == ALPHA for s in exporter.get_finished_spans())


async def test_a_denied_call_is_an_error_status_with_its_code_not_an_exception_and_attributes_are_current() -> None:
    """A denial is an answer, not a crash: server and client spans end with an ERROR status and the
    gRPC code, and carry no ``exception`` event (with its Python stack trace). Addresses use the current
    semantic conventions: network.peer.* on server spans, server.address/port on client spans."""
    ca = DevCA("example.org")
    exporter = InMemorySpanExporter()
    async with Node(node_config("beta", allow=[ALPHA]), services=[EchoService()], source=ManualSource(ca, BETA),
                    tracer_provider=provider("beta", exporter)) as beta:
        async with Node(node_config("gamma", peers={"beta": peer(beta.port, BETA)}), source=ManualSource(ca, GAMMA),
                        tracer_provider=provider("gamma", exporter)) as gamma:
            stub = gamma.stub("beta", demo_pb2_grpc.EchoStub)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Say(demo_pb2.SayRequest(text="x"), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                [r async for r in stub.SayStream(demo_pb2.SayRequest(text="x y"), timeout=10)]
    assert unary.value.code() == stream.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert unary.value.details() == f"authz: {GAMMA} is not allowed to call /meshnode.demo.v1.Echo/Say"
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    for span in spans:
        attrs = span.attributes or {}
        assert [e.name for e in span.events] == [], (span.name, span.kind)
        assert span.status.status_code == StatusCode.ERROR
        assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert not [key for key in attrs if key.startswith("net.")]
        if span.kind == SpanKind.SERVER:
            assert (span.status.description or "").startswith("PERMISSION_DENIED: authz: ")
            assert attrs["network.peer.address"] == "127.0.0.1" and isinstance(attrs["network.peer.port"], int)
            assert attrs["meshnode.authz.decision"] == "deny"
        else:
            assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", beta.port)
            assert "authz: " in (span.status.description or "")


@pytest.mark.slow
async def test_a_w3c_traceparent_from_grpc_js_parents_the_server_span(tmp_path: Path) -> None:
    """The server span is made in meshnode's own per-call hook, not by OpenTelemetry's interceptor: a
    traceparent sent by an independent client (@grpc/grpc-js, by hand) still parents it, and it carries
    the RPC semantic conventions, the caller's identity and the status code the call ended with."""
    ca = DevCA("example.org")
    client = issue_snapshot(ca, CLIENT)
    for name, data in (("ca.pem", client.bundle_pem("example.org")), ("cert.pem", client.chain_pem),
                       ("key.pem", client.key_pem)):
        (tmp_path / name).write_bytes(data)
    exporter = InMemorySpanExporter()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with Node(node_config("beta", allow=[CLIENT]), services=[EchoService()], source=ManualSource(ca, BETA),
                    tracer_provider=provider("beta", exporter)) as beta:
        answer = await call_echo(f"127.0.0.1:{beta.port}", dns_name_for(parse_spiffe_id(BETA)), tmp_path,
                                 traceparent=f"00-{trace_id}-{parent_id}-01")
    assert answer == {"code": 0, "details": "", "caller": CLIENT}
    [span] = exporter.get_finished_spans()
    assert (span.name, span.kind) == ("/meshnode.demo.v1.Echo/Say", SpanKind.SERVER)
    assert span.context is not None and span.parent is not None
    assert (format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (trace_id, parent_id)
    assert span.parent.is_remote
    attrs = span.attributes or {}
    assert (attrs["rpc.system"], attrs["rpc.service"], attrs["rpc.method"]) == ("grpc", "meshnode.demo.v1.Echo", "Say")
    assert attrs["rpc.grpc.status_code"] == 0 and span.status.status_code == StatusCode.UNSET
    assert attrs["meshnode.peer.spiffe_id"] == CLIENT and attrs["meshnode.authz.decision"] == "allow"
    assert attrs["network.peer.address"] == "127.0.0.1" and "grpc-node-js" in str(attrs["user_agent.original"])


async def test_a_handler_error_is_one_exception_event_and_an_unknown_status() -> None:
    """An exception escaping a handler: the span records it once, with status code 2 (UNKNOWN) and
    an ERROR status; an abort() is an answer: its code, no exception event."""

    class Failing(demo_pb2_grpc.EchoServicer):
        async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
            if request.text == "abort":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")
            raise ValueError("boom")

    ca = DevCA("example.org")
    exporter = InMemorySpanExporter()
    async with Node(node_config("beta", allow=[GAMMA]), services=[Failing()], source=ManualSource(ca, BETA),
                    tracer_provider=provider("beta", exporter)) as beta:
        async with Node(node_config("gamma", peers={"beta": peer(beta.port, BETA)}),
                        source=ManualSource(ca, GAMMA)) as gamma:
            stub = gamma.stub("beta", demo_pb2_grpc.EchoStub)
            for text, code in (("x", grpc.StatusCode.UNKNOWN), ("abort", grpc.StatusCode.FAILED_PRECONDITION)):
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await stub.Say(demo_pb2.SayRequest(text=text), timeout=10)
                assert failed.value.code() == code
    crashed, aborted = exporter.get_finished_spans()
    assert [e.name for e in crashed.events] == ["exception"]
    assert (crashed.events[0].attributes or {})["exception.type"] == "ValueError"
    assert (crashed.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    assert crashed.status.status_code == StatusCode.ERROR
    assert [e.name for e in aborted.events] == []
    assert (aborted.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
