"""Tracing for grpc.aio servers and channels: opentelemetry-instrumentation-grpc, plus peer labels.

The OpenTelemetry interceptors make the spans, follow the RPC semantic
conventions and propagate the context (W3C traceparent in metadata). They
use only the OpenTelemetry API: with no SDK installed they make no spans but
still pass an incoming trace context on to outgoing calls.

What they lack is who the peers are. Verified with grpcio 1.85 and
instrumentation 0.66b2: on a server whose interceptors list starts with
:func:`aio_server_interceptor`, the server span is current inside the
*wrapped behaviour* of any later interceptor and in the handler (not in a
later interceptor's ``intercept_service`` body, which runs before the span
starts), so the authorization interceptor stamps the caller's ID and its
decision there. On a channel, interceptors listed after the OpenTelemetry
ones run with the client span current; :func:`aio_client_interceptors`
appends four tiny ones that stamp fixed attributes (the expected peer ID,
the local ID) on every client span.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Mapping
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

__all__ = ["aio_client_interceptors", "aio_server_interceptor"]


def aio_server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> grpc.aio.ServerInterceptor:
    """OpenTelemetry's aio server interceptor; put it first in the server's interceptors."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor as make

    interceptor: grpc.aio.ServerInterceptor = make(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    return interceptor


def aio_client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's four aio client interceptors, then (with ``attributes``) four that stamp them.

    Pass the result as (the start of) ``interceptors=`` of a grpc.aio channel.
    """
    from opentelemetry.instrumentation.grpc import aio_client_interceptors as make

    out: list[grpc.aio.ClientInterceptor] = list(make(tracer_provider=tracer_provider))  # type: ignore[no-untyped-call]
    if attributes:
        fixed = dict(attributes)
        out += [
            _StampUnaryUnary(fixed),
            _StampUnaryStream(fixed),
            _StampStreamUnary(fixed),
            _StampStreamStream(fixed),
        ]
    return out


class _Stamp:
    def __init__(self, attributes: dict[str, AttributeValue]) -> None:
        self._attributes = attributes

    def _stamp(self) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(self._attributes)


_Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]
_Requests = AsyncIterable[Any] | Iterator[Any]


class _StampUnaryUnary(_Stamp, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc ships no types
    async def intercept_unary_unary(
        self, continuation: _Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self._stamp()
        return await continuation(client_call_details, request)


class _StampUnaryStream(_Stamp, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc ships no types
    async def intercept_unary_stream(
        self, continuation: _Continuation, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        self._stamp()
        return await continuation(client_call_details, request)


class _StampStreamUnary(_Stamp, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc ships no types
    async def intercept_stream_unary(
        self,
        continuation: _Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        requests: _Requests,
    ) -> Any:
        self._stamp()
        return await continuation(client_call_details, requests)


class _StampStreamStream(_Stamp, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc ships no types
    async def intercept_stream_stream(
        self,
        continuation: _Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        requests: _Requests,
    ) -> Any:
        self._stamp()
        return await continuation(client_call_details, requests)
