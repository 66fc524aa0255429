"""Handlers of every arity and kind behind an authorizer, and a client that calls each one.

No tests here. :class:`Probe` has one handler per arity and kind (async,
sync, generator, reader/writer); each records that it ran and answers with
``peer_id()``. :func:`registration` registers it (and a demo Echo) wrapped at
registration (``mode="wrap"``, what the node does) or plain, for an
authorizer's interceptor (``mode="interceptor"``). :class:`Client` makes one
call of any of them and returns status, details and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio

from meshnode.authz import Authorizer, peer_id
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from tests.support.authz import SERVER_ID, ClientCert, Served

SERVICE = "t.Probe"


class Probe:
    """One handler per arity and kind; each records that it ran and answers with peer_id()."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.read = 0

    def _me(self, name: str) -> bytes:
        self.entered.append(name)
        return str(peer_id()).encode()

    async def async_unary(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0)
        return self._me("AsyncUnary")

    def sync_unary(self, request: bytes, context: Any) -> bytes:
        return self._me("SyncUnary")

    async def async_server_stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield self._me("AsyncServerStream")
        await asyncio.sleep(0)
        yield str(peer_id()).encode()

    def sync_server_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        yield self._me("SyncServerStream")
        yield str(peer_id()).encode()

    async def writer_stream(self, request: bytes, context: Any) -> None:
        await context.write(self._me("WriterStream"))

    async def async_client_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        me = self._me("AsyncClientStream")
        async for _ in requests:
            self.read += 1
        return me

    def sync_client_stream(self, requests: Iterator[bytes], context: Any) -> bytes:
        me = self._me("SyncClientStream")
        for _ in requests:
            self.read += 1
        return me

    async def async_bidi(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.entered.append("AsyncBidi")
        async for _ in requests:
            self.read += 1
            yield str(peer_id()).encode()

    def sync_bidi(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.entered.append("SyncBidi")
        for _ in requests:
            self.read += 1
            yield str(peer_id()).encode()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "AsyncUnary": grpc.unary_unary_rpc_method_handler(self.async_unary),
            "SyncUnary": grpc.unary_unary_rpc_method_handler(self.sync_unary),
            "AsyncServerStream": grpc.unary_stream_rpc_method_handler(self.async_server_stream),
            "SyncServerStream": grpc.unary_stream_rpc_method_handler(self.sync_server_stream),
            "WriterStream": grpc.unary_stream_rpc_method_handler(self.writer_stream),
            "AsyncClientStream": grpc.stream_unary_rpc_method_handler(self.async_client_stream),
            "SyncClientStream": grpc.stream_unary_rpc_method_handler(self.sync_client_stream),
            "AsyncBidi": grpc.stream_stream_rpc_method_handler(self.async_bidi),
            "SyncBidi": grpc.stream_stream_rpc_method_handler(self.sync_bidi),
        }


class Echo(demo_pb2_grpc.EchoServicer):
    async def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text, caller=str(peer_id()), server=SERVER_ID)

    async def SayStream(self, request: demo_pb2.SayRequest, context: Any) -> AsyncIterator[demo_pb2.SayReply]:
        yield demo_pb2.SayReply(text=request.text, caller=str(peer_id()), server=SERVER_ID)


def registration(authorizer: Authorizer, probe: Probe, mode: str) -> Any:
    def register(server: grpc.aio.Server) -> None:
        target = authorizer.registrar(server) if mode == "wrap" else server
        target.add_registered_method_handlers(SERVICE, probe.handlers())
        demo_pb2_grpc.add_EchoServicer_to_server(Echo(), target)  # type: ignore[no-untyped-call]

    return register


def interceptors(authorizer: Authorizer, mode: str) -> list[grpc.aio.ServerInterceptor]:
    return [authorizer.interceptor()] if mode == "interceptor" else []


METHODS = list(Probe().handlers())


class Client:
    """One caller: an aio channel, plus a sync one for bidi calls (see Served.sync_channel)."""

    def __init__(self, served: Served, cert: ClientCert, roots: bytes) -> None:
        self.aio = served.channel(cert, roots)
        self.sync = served.sync_channel(cert, roots)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aio.close()
        self.sync.close()

    async def call(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[Any, str, list[bytes]]:
        """(status code, details, answers) of one call, sending three messages where the client streams."""
        path = f"/{SERVICE}/{method}"
        three = [b"1", b"2", b"3"]
        if "Bidi" in method:

            def bidi() -> tuple[Any, str, list[bytes]]:
                try:
                    return grpc.StatusCode.OK, "", list(self.sync.stream_stream(path)(iter(three), metadata=metadata))
                except grpc.RpcError as exc:
                    return exc.code(), exc.details() or "", []

            return await asyncio.to_thread(bidi)
        try:
            if "ClientStream" in method:
                return grpc.StatusCode.OK, "", [await self.aio.stream_unary(path)(iter(three), metadata=metadata)]
            if "Unary" in method:
                return grpc.StatusCode.OK, "", [await self.aio.unary_unary(path)(b"x", metadata=metadata)]
            return grpc.StatusCode.OK, "", [a async for a in self.aio.unary_stream(path)(b"x", metadata=metadata)]
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", []
