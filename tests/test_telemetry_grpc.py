"""opentelemetry-instrumentation-grpc on grpc.aio through meshnode's helpers, over loopback.

Pins what the node's interceptors rely on: later server interceptors see the
server span current inside the behaviour they wrap; interceptors after the
OpenTelemetry ones on a channel see the client span current (all four
arities); the context propagates across hops, also through a node without SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshnode.telemetry import aio_client_interceptors, aio_server_interceptor
from meshnode.telemetry import attributes as attr

LOCAL = "spiffe://example.org/node/alpha"
PEER = "spiffe://example.org/node/beta"


class Stamp(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Stands for the authorization interceptor: records whether a span is current where it runs."""

    def __init__(self) -> None:
        self.in_intercept_service: list[bool] = []

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]], details: Any
    ) -> grpc.RpcMethodHandler:
        self.in_intercept_service.append(trace.get_current_span().is_recording())
        handler = await continuation(details)

        def mark() -> None:
            trace.get_current_span().set_attribute(attr.AUTHZ_DECISION, "allow")

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def uu(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                mark()
                return await inner_uu(request, context)  # type: ignore[no-any-return]

            return grpc.unary_unary_rpc_method_handler(uu)
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def us(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                mark()
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(us)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def su(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
                mark()
                return await inner_su(requests, context)  # type: ignore[no-any-return]

            return grpc.stream_unary_rpc_method_handler(su)
        inner_ss = handler.stream_stream

        async def ss(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            mark()
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(ss)


async def _uu(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _us(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for _ in range(2):
        yield request


async def _su(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


async def _ss(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "UU": grpc.unary_unary_rpc_method_handler(_uu),
        "US": grpc.unary_stream_rpc_method_handler(_us),
        "SU": grpc.stream_unary_rpc_method_handler(_su),
        "SS": grpc.stream_stream_rpc_method_handler(_ss),
    },
)


async def _requests() -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_client_and_server_spans_carry_identity_in_all_arities() -> None:
    provider, exporter = _provider()
    stamp = Stamp()
    server = grpc.aio.server(interceptors=[aio_server_interceptor(provider), stamp])
    server.add_generic_rpc_handlers([HANDLERS])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    interceptors = aio_client_interceptors(
        provider, attributes={attr.PEER_SPIFFE_ID: PEER, attr.LOCAL_SPIFFE_ID: LOCAL}
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as channel:
            assert await channel.unary_unary("/test.Echo/UU")(b"x") == b"x"
            assert [m async for m in channel.unary_stream("/test.Echo/US")(b"y")] == [b"y", b"y"]
            assert await channel.stream_unary("/test.Echo/SU")(_requests()) == b"ab"
            assert [m async for m in channel.stream_stream("/test.Echo/SS")(_requests())] == [b"a", b"b"]
    finally:
        await server.stop(None)

    spans: dict[tuple[str, trace.SpanKind], ReadableSpan] = {(s.name, s.kind): s for s in exporter.get_finished_spans()}
    assert len(spans) == 8
    for method in ("UU", "US", "SU", "SS"):
        name = f"/test.Echo/{method}"
        client, srv = spans[name, trace.SpanKind.CLIENT], spans[name, trace.SpanKind.SERVER]
        assert client.attributes is not None and srv.attributes is not None and srv.parent is not None
        assert client.attributes[attr.PEER_SPIFFE_ID] == PEER, method
        assert client.attributes[attr.LOCAL_SPIFFE_ID] == LOCAL, method
        assert client.attributes["rpc.method"] == method and client.attributes["rpc.service"] == "test.Echo"
        # Context propagated: the server span is the client span's child, in the same trace.
        assert srv.context is not None and client.context is not None
        assert srv.context.trace_id == client.context.trace_id
        assert (srv.parent.span_id, srv.parent.is_remote) == (client.context.span_id, True)
        # The later server interceptor stamped the server span from inside the wrapped behaviour.
        assert srv.attributes[attr.AUTHZ_DECISION] == "allow", method
    # ... but in its intercept_service body the server span has not started yet.
    assert stamp.in_intercept_service == [False] * 4


async def test_trace_passes_through_a_node_without_sdk() -> None:
    """A node whose interceptors run on the API's no-op provider forwards the caller's context."""
    provider, exporter = _provider()
    noop = trace.NoOpTracerProvider()
    seen: dict[str, str | None] = {}

    last = grpc.aio.server(interceptors=[aio_server_interceptor(provider)])

    async def record(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen["traceparent"] = dict(context.invocation_metadata()).get("traceparent")
        return request

    last.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Hop", {"Call": grpc.unary_unary_rpc_method_handler(record)})]
    )
    last_port = last.add_insecure_port("127.0.0.1:0")
    await last.start()
    onward = grpc.aio.insecure_channel(f"127.0.0.1:{last_port}", interceptors=aio_client_interceptors(noop))

    async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await onward.unary_unary("/test.Hop/Call")(request)  # type: ignore[no-any-return]

    middle = grpc.aio.server(interceptors=[aio_server_interceptor(noop)])
    middle.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Hop", {"Call": grpc.unary_unary_rpc_method_handler(forward)})]
    )
    middle_port = middle.add_insecure_port("127.0.0.1:0")
    await middle.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{middle_port}", interceptors=aio_client_interceptors(provider)
        ) as channel:
            assert await channel.unary_unary("/test.Hop/Call")(b"x") == b"x"
    finally:
        await onward.close()
        await middle.stop(None)
        await last.stop(None)
    by_kind = {s.kind: s for s in exporter.get_finished_spans()}
    first, final = by_kind[trace.SpanKind.CLIENT], by_kind[trace.SpanKind.SERVER]
    assert first.context is not None and final.context is not None and final.parent is not None
    assert final.context.trace_id == first.context.trace_id
    assert final.parent.span_id == first.context.span_id
    assert seen["traceparent"] is not None and f"{first.context.span_id:016x}" in seen["traceparent"]
