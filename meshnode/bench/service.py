"""The service every benchmark server runs: the demo Echo service, doing as little as possible.

The same class serves the bare grpcio baselines and the meshnode nodes, so
the handlers cost the same everywhere and the differences are what sits
around them. ``Say`` answers a 64-byte text with itself; ``SayStream``
answers with :data:`STREAM_MESSAGES` copies of it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import grpc

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.x509svid import load_pem_certs

__all__ = ["PAYLOAD", "REQUEST", "STREAM_MESSAGES", "BenchEcho", "CertificateLog", "LoggingEcho"]

#: the request (and reply) text: 64 bytes
PAYLOAD = "m" * 64
REQUEST = demo_pb2.SayRequest(text=PAYLOAD)
#: replies per server stream
STREAM_MESSAGES = 10


class BenchEcho(demo_pb2_grpc.EchoServicer):
    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text)

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        reply = demo_pb2.SayReply(text=request.text)
        for _ in range(STREAM_MESSAGES):
            yield reply


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
        reply = demo_pb2.SayReply(text=request.text)
        for _ in range(STREAM_MESSAGES):
            yield reply
