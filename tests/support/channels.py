"""An mTLS Echo server that follows an identity source, and channel plans for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from meshnode.channel import ChannelPlan
from meshnode.credentials import ServerCredentials, channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.x509svid import load_pem_certs
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource

SERVER_ID = "spiffe://example.org/node/server"
CLIENT_ID = "spiffe://example.org/node/client"


class Echo(demo_pb2_grpc.EchoServicer):
    def __init__(self) -> None:
        self.client_serials: list[int] = []

    def _caller(self, context: grpc.aio.ServicerContext) -> str:
        auth = context.auth_context()
        pem = auth["x509_pem_cert"][0]
        self.client_serials.append(load_pem_certs(pem, "peer")[0].serial_number)
        return auth["peer_spiffe_id"][0].decode()

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        return demo_pb2.SayReply(text=request.text, caller=self._caller(context))

    async def SayStream(
        self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[demo_pb2.SayReply]:
        caller = self._caller(context)
        for i in range(int(request.text)):
            yield demo_pb2.SayReply(text=str(i), caller=caller)
            await asyncio.sleep(0.01)


def plan_for(snapshot: IdentitySnapshot, port: int) -> ChannelPlan:
    name = dns_name_for(SERVER_ID)
    return ChannelPlan(
        key=f"{snapshot.svid_fingerprint}:{snapshot.bundle_fingerprint('example.org')}",
        target=f"127.0.0.1:{port}",
        credentials=channel_credentials(snapshot, "example.org"),
        options=(("grpc.ssl_target_name_override", name),),
        not_after=snapshot.not_after,
    )


@contextlib.asynccontextmanager
async def echo_server(source: ManualSource) -> AsyncIterator[tuple[int, Echo, ServerCredentials]]:
    servicer = Echo()
    server = grpc.aio.server()
    demo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    creds = ServerCredentials(source, {"example.org"})
    port = server.add_secure_port("127.0.0.1:0", creds.credentials)
    await server.start()
    try:
        yield port, servicer, creds
    finally:
        await server.stop(0)
        creds.close()


