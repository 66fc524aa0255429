"""The service every benchmark server runs: the demo Echo service, doing as little as possible.

The same class serves the bare grpcio baselines and the meshnode nodes, so
the handlers cost the same everywhere and the differences are what sits
around them. ``Say`` answers a 48-byte text with itself; ``SayStream``
answers with :data:`STREAM_MESSAGES` copies of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable

import grpc

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.x509svid import load_pem_certs

__all__ = [
    "LONG_REQUEST", "LONG_STREAM_MESSAGES", "PAYLOAD", "REQUEST", "STREAM_MESSAGES",
    "AllowlistEcho", "BenchEcho", "CertificateAllowlistEcho", "CertificateLog", "LoggingEcho",
]

#: the request (and reply) text: 48 bytes in 10 words (the demo service's stream sends a reply per word)
PAYLOAD = " ".join(["mesh"] * 9 + ["net"])
REQUEST = demo_pb2.SayRequest(text=PAYLOAD)
#: replies per server stream
STREAM_MESSAGES = 10
#: replies per long server stream (what a message costs, with the per-call costs spread thin):
#: asked for by a request of that many words (the demo service also replies once per word)
LONG_STREAM_MESSAGES = 200
LONG_REQUEST = demo_pb2.SayRequest(text=" ".join(["m"] * LONG_STREAM_MESSAGES))


def _replies(request: demo_pb2.SayRequest) -> tuple[demo_pb2.SayReply, int]:
    """A stream's reply and how many times to send it: :data:`LONG_STREAM_MESSAGES` of ``PAYLOAD`` for the
    long request, else :data:`STREAM_MESSAGES` of the request's text."""
    if len(request.text) > len(PAYLOAD):
        return demo_pb2.SayReply(text=PAYLOAD), LONG_STREAM_MESSAGES
    return demo_pb2.SayReply(text=request.text), STREAM_MESSAGES


class BenchEcho(demo_pb2_grpc.EchoServicer):
    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text)

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        reply, count = _replies(request)
        for _ in range(count):
            yield reply


class AllowlistEcho(BenchEcho):
    """:class:`BenchEcho` authorized by hand: the caller's ``peer_identities()`` must hold an allowed ID.

    What a careful grpcio user writes without a framework: no cache, no
    policy language, no telemetry; one C call and a set lookup per call.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = frozenset(a.encode() for a in allowed)

    def _allowed_caller(self, context: grpc.aio.ServicerContext) -> bool:
        identities = context.peer_identities()
        return identities is not None and not self._allowed.isdisjoint(identities)

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        if not self._allowed_caller(context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
        return demo_pb2.SayReply(text=request.text)

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        if not self._allowed_caller(context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller not allowed")
        reply, count = _replies(request)
        for _ in range(count):
            yield reply


class CertificateAllowlistEcho(AllowlistEcho):
    """:class:`AllowlistEcho` done safely by hand: decided on the caller's certificate, not its SAN strings.

    ``peer_identities()`` is a flat list of SAN strings without their type: a
    certificate with a DNS SAN (or, without SANs, a common name) spelled like
    an allowed SPIFFE ID passes :class:`AllowlistEcho`. A careful hand-written
    server keys on the verified leaf (``auth_context()["x509_pem_cert"]``, the
    only API that gives it) and checks it as an X509-SVID once per
    certificate, as meshnode does; this is that server, with no framework
    (the handlers are :class:`AllowlistEcho`'s, only the check differs).
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        from meshnode.spiffeid import parse_spiffe_id

        self._ids = frozenset(parse_spiffe_id(a) for a in allowed)
        self._decided: dict[bytes, bool] = {}

    def _allowed_caller(self, context: grpc.aio.ServicerContext) -> bool:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            return False
        allowed = self._decided.get(pems[0])
        if allowed is None:
            from meshnode.authz.identity import resolve_peer

            peer = resolve_peer(auth).spiffe_id
            allowed = self._decided[pems[0]] = peer is not None and peer in self._ids
        return allowed


class CertificateLog:
    """When each client certificate was first seen in a call (``time.monotonic()``, system-wide on Linux)."""

    def __init__(self) -> None:
        self._first: dict[bytes, float] = {}
        self._serials: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def note(self, context: grpc.aio.ServicerContext) -> None:
        pems = context.auth_context().get("x509_pem_cert")
        if pems and pems[0] not in self._first:
            self._first.setdefault(pems[0], time.monotonic())

    def first_seen(self) -> dict[str, float]:
        """Client certificate serial (hex) -> when a call first carried it; callable from any thread."""
        first = dict(self._first)  # one atomic copy while the loop keeps writing
        with self._lock:
            for pem in first:
                if pem not in self._serials:
                    self._serials[pem] = format(load_pem_certs(pem, "client certificate")[0].serial_number, "x")
            return {self._serials[pem]: seen for pem, seen in first.items()}


class LoggingEcho(BenchEcho):
    """:class:`BenchEcho` that records the client certificate of every call (rotation scenario)."""

    def __init__(self, log: CertificateLog) -> None:
        self.log = log

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        self.log.note(context)
        return demo_pb2.SayReply(text=request.text)

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        self.log.note(context)
        reply, count = _replies(request)
        for _ in range(count):
            yield reply
