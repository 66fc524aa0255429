"""A TLS-terminating gRPC proxy, as a gateway or L7 load balancer sits between a caller and a server.

It accepts mTLS from any workload its trust bundle vouches for, with its own
SVID, and re-originates every unary call to one upstream over a new mTLS
connection with that same SVID: the upstream's TLS layer sees the proxy,
never the caller. The ``authorization`` metadata (the caller's JWT-SVID) is
forwarded as it came; nothing else is. Request and response bytes pass
through unparsed. Statuses from upstream are passed back as they are.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from meshnode.credentials import channel_credentials
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.spiffeid import dns_name_for, parse_spiffe_id


class _Forward(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, proxy: ForwardingProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        async def forward(request: bytes, context: Any) -> bytes:
            return await self._proxy.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)


class ForwardingProxy:
    """``async with ForwardingProxy(snapshot, "127.0.0.1:PORT", upstream_id) as proxy: ... proxy.port``"""

    def __init__(self, snapshot: IdentitySnapshot, upstream: str, upstream_id: str) -> None:
        self.snapshot = snapshot
        self.forwarded = 0
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((_Forward(self),))
        creds = grpc.ssl_server_credentials(
            [(snapshot.key_pem, snapshot.chain_pem)], root_certificates=snapshot.bundle_pem(snapshot.trust_domain),
            require_client_auth=True,
        )
        self.port = self._server.add_secure_port("127.0.0.1:0", creds)
        name = dns_name_for(parse_spiffe_id(upstream_id))
        self._channel = grpc.aio.secure_channel(
            upstream, channel_credentials(snapshot, snapshot.trust_domain),
            options=[("grpc.ssl_target_name_override", name)],
        )

    async def forward(self, method: str, request: bytes, context: Any) -> bytes:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")
        call = self._channel.unary_unary(method)
        try:
            reply: bytes = await call(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
        self.forwarded += 1
        return reply

    async def __aenter__(self) -> ForwardingProxy:
        await self._server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.stop(0)
        await self._channel.close()
