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
the local ID, ``server.address``/``server.port``) on every client span.
Server spans start with the current RPC semantic conventions
(``network.peer.*`` rather than the deprecated ``net.peer.*`` that the
instrumentation still writes): see :func:`aio_server_interceptor`.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

__all__ = [
    "SCHEMA_URL",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "peer_address_attributes",
    "server_address_attributes",
    "server_span_attributes",
]


#: The semantic conventions meshnode's span attributes follow (RPC spans with network.peer.*/server.*).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"


def aio_server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> grpc.aio.ServerInterceptor:
    """OpenTelemetry's aio server interceptor, with current attributes; put it first in the server's interceptors.

    opentelemetry-instrumentation-grpc (0.66b2) still labels server spans with
    the deprecated ``net.peer.ip``/``net.peer.port``/``net.peer.name`` and
    ``rpc.user_agent``; this one starts the same span with
    ``network.peer.address``/``network.peer.port``/``network.type`` and
    ``user_agent.original`` instead (everything else is OpenTelemetry's).
    """
    from opentelemetry.instrumentation.grpc import _aio_server
    from opentelemetry.instrumentation.grpc.version import __version__

    class CurrentSemconvServerInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
        def _start_span(self, handler_call_details: Any, context: Any, set_status_on_exception: bool = False) -> Any:
            return self._tracer.start_as_current_span(
                name=handler_call_details.method,
                kind=trace.SpanKind.SERVER,
                attributes=server_span_attributes(handler_call_details.method, context),
                set_status_on_exception=set_status_on_exception,
            )

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.grpc", __version__, tracer_provider, schema_url=SCHEMA_URL
    )
    interceptor: grpc.aio.ServerInterceptor = CurrentSemconvServerInterceptor(tracer)  # type: ignore[no-untyped-call]
    return interceptor


def server_span_attributes(full_method: str, context: Any) -> dict[str, AttributeValue]:
    """A server span's starting attributes: RPC semantic conventions, and the peer's network address."""
    service, _, method = full_method.lstrip("/").partition("/")
    attributes: dict[str, AttributeValue] = {
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": 0,
    }
    attributes.update(peer_address_attributes(context.peer()))
    for key, value in context.invocation_metadata() or ():
        if key == "user-agent":
            attributes["user_agent.original"] = value if isinstance(value, str) else repr(value)
            break
    return attributes


def peer_address_attributes(peer: str) -> dict[str, AttributeValue]:
    """``ipv4:10.0.0.1:5000`` / ``ipv6:%5B::1%5D:5000`` (what ``context.peer()`` says) as
    ``network.type``, ``network.peer.address`` and ``network.peer.port``; {} for anything else."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return {}
    host, _, port = unquote(rest.split(",")[0]).rpartition(":")
    if not host or not port.isdigit():
        return {}
    return {"network.type": kind, "network.peer.address": host.strip("[]"), "network.peer.port": int(port)}


def aio_client_interceptors(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """OpenTelemetry's four aio client interceptors, then (with ``attributes``) four that stamp them.

    Pass the result as (the start of) ``interceptors=`` of a grpc.aio channel.
    A call that ends with a non-OK status ends its span with an error status
    and ``rpc.grpc.status_code``: OpenTelemetry's stream interceptors would
    also add an ``exception`` event with a Python stack trace (a denial or a
    NOT_FOUND is an answer, not a crash); other exceptions still get one.
    """
    from opentelemetry.instrumentation.grpc import _aio_client
    from opentelemetry.instrumentation.grpc.version import __version__

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.grpc", __version__, tracer_provider, schema_url=SCHEMA_URL
    )
    out: list[grpc.aio.ClientInterceptor] = [
        type(base.__name__, (_StatusNotException, base), {})(tracer)
        for base in (
            _aio_client.UnaryUnaryAioClientInterceptor,
            _aio_client.UnaryStreamAioClientInterceptor,
            _aio_client.StreamUnaryAioClientInterceptor,
            _aio_client.StreamStreamAioClientInterceptor,
        )
    ]
    if attributes:
        fixed = dict(attributes)
        out += [
            _StampUnaryUnary(fixed),
            _StampUnaryStream(fixed),
            _StampStreamUnary(fixed),
            _StampStreamStream(fixed),
        ]
    return out


class _StatusNotException:
    """Mixed in before OpenTelemetry's aio client interceptors: an RPC error is a status on the span."""

    @staticmethod
    def add_error_details_to_span(span: trace.Span, exc: BaseException) -> None:
        if not isinstance(exc, grpc.RpcError):
            from opentelemetry.instrumentation.grpc._aio_client import _BaseAioClientInterceptor

            _BaseAioClientInterceptor.add_error_details_to_span(span, exc)  # type: ignore[no-untyped-call]
            return
        code = exc.code()
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(Status(StatusCode.ERROR, exc.details() or code.name))


def server_address_attributes(address: str) -> dict[str, AttributeValue]:
    """A client span's ``server.address`` and ``server.port``, from the peer's ``host:port``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return {"server.address": address}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


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
