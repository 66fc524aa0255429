"""Server spans made in meshnode's per-call hook, not by a gRPC interceptor.

OpenTelemetry's aio server interceptor costs most of what tracing costs a
node: grpc.aio runs every call through its interceptor machinery, the
interceptor wraps the servicer context in a proxy and reads the metadata
twice. The admitted wrapper (:mod:`meshnode.pipeline`) already runs once per
call, so it starts the server span itself, with what the interceptor gives
it (:func:`meshnode.telemetry.instrumentation.aio_server_interceptor`):

* name: the full method (``/pkg.Service/Method``), kind SERVER;
* the caller's trace context from the call's metadata through the global
  propagator (W3C ``traceparent``/``tracestate`` and baggage by default),
  current for the whole call, so outgoing calls continue the trace;
* ``rpc.system``, ``rpc.service``, ``rpc.method``, ``network.peer.*``,
  ``user_agent.original`` at the start; ``rpc.grpc.status_code`` at the end,
  from the code the call ended with (``set_code``, ``abort``, an exception:
  2 UNKNOWN, a cancellation: 1 CANCELLED);
* status ERROR for the codes the semantic conventions count as server
  errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
  DATA_LOSS), described as the interceptor does (``StatusCode.X:details``);
  a refusal keeps the status the authorizer set (ERROR naming the code);
* an ``exception`` event for an exception escaping the handler (once; not
  for ``abort()``, which is an answer, nor for a cancellation).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from meshnode.telemetry.instrumentation import SCHEMA_URL, peer_address_attributes, server_span_attributes

__all__ = ["ServerSpans"]

#: codes a server span counts as its own error (the RPC semantic conventions; OpenTelemetry's interceptor)
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_TRACER_NAME = "meshnode.server"


class _NoPeer:
    """A context without a peer address or metadata: what :func:`server_span_attributes` needs per method."""

    @staticmethod
    def peer() -> str:
        return ""

    @staticmethod
    def invocation_metadata() -> tuple[()]:
        return ()


class ServerSpans:
    """Starts and ends the server span of each call (``tracer_provider`` None: the global one)."""

    _PEERS_LIMIT = 4096  # parsed peer addresses kept (one per client connection)
    _METHODS_LIMIT = 1024  # a catch-all generic handler may see any path a caller makes up

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_TRACER_NAME, None, tracer_provider, schema_url=SCHEMA_URL)
        self._methods: dict[str, dict[str, AttributeValue]] = {}
        self._peers: dict[str, dict[str, AttributeValue]] = {}

    def _attributes(self, method: str, peer: str) -> dict[str, AttributeValue]:
        """The span's starting attributes: the method's and the peer address's, each worked out once."""
        base = self._methods.get(method)
        if base is None:
            if len(self._methods) >= self._METHODS_LIMIT:
                self._methods.clear()
            base = self._methods[method] = server_span_attributes(method, _NoPeer)
        address = self._peers.get(peer)
        if address is None:
            if len(self._peers) >= self._PEERS_LIMIT:
                self._peers.clear()
            address = self._peers[peer] = peer_address_attributes(peer)
        return {**base, **address}

    def start(self, method: str, context: Any) -> tuple[Span, object]:
        """Start the span of a call to ``method`` and make it current; returns it and the token to detach."""
        carrier = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        attributes = self._attributes(method, context.peer())
        agent = carrier.get("user-agent")
        if agent is not None:
            attributes["user_agent.original"] = agent
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(method, parent, kind=SpanKind.SERVER, attributes=attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def end(span: Span, token: object, code: int, error: BaseException | None, details: str | None) -> None:
        """End the span of a call that ended with ``code`` (its number), raising ``error`` if any."""
        try:
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code)
                if error is not None and not _answered(error):
                    span.record_exception(error)
                status = _BY_NUMBER.get(code)
                if status in _SERVER_ERRORS:
                    span.set_status(Status(StatusCode.ERROR, f"{status}:{details or ''}"))
            span.end()
        finally:
            otel_context.detach(token)  # type: ignore[arg-type]  # the token attach() returned


def _answered(error: BaseException) -> bool:
    """Not a crash: the handler aborted with a status, or the call was cancelled."""
    return isinstance(error, (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit))
