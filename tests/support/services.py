"""Services for tests that run `meshnode run` in a subprocess (cwd = the repository root)."""

from __future__ import annotations

import asyncio
import sys

import grpc
from cryptography import x509

from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.service import NodeService


class Stall(NodeService, demo_pb2_grpc.EchoServicer):
    """Echo.Say never answers: it prints ``stall: entered`` and waits until the call is cancelled."""

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        print("stall: entered", flush=True, file=sys.stdout)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Greeter(NodeService, demo_pb2_grpc.EchoServicer):
    """The README's greeter: who may call it is declared on the class, not in [authz]."""

    allow = ["spiffe://example.org/node/beta"]

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text)


class CallerSerial(NodeService, demo_pb2_grpc.EchoServicer):
    """Echo.Say answers with the serial (hex) of the certificate the caller's connection was made with."""

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        pem = context.auth_context()["x509_pem_cert"][0]
        return demo_pb2.SayReply(text=format(x509.load_pem_x509_certificate(pem).serial_number, "x"))
