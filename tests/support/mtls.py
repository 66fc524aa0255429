"""A sync grpcio mTLS server on loopback whose handlers an Authorizer wraps, and clients for it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from concurrent import futures
from typing import Any

import grpc

from meshnode.authz import Authorizer
from meshnode.devagent.ca import DevCA, IssuedSVID
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import dns_name_for

SERVER_ID = "spiffe://example.org/node/server"
HOUR = dt.timedelta(hours=1)


def _key_pem(svid: IssuedSVID) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _gated(authorizer: Authorizer, path: str) -> Any:
    """A sync handler that asks ``authorizer.check`` first (the node's pipeline is grpc.aio only)."""

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        verdict = authorizer.check(context, path)
        if verdict.code is not None:
            context.abort(verdict.code, verdict.details)
        return b"ok"

    return handler


class AuthorizedServer:
    """Serves ``methods`` (full paths ``/pkg.Svc/M``, unary, reply ``b"ok"``), each decided by ``authorizer``.

    A context manager; ``channel(spiffe_id)`` opens a sync client channel with
    an SVID of the same CA (close it, or let the server's close do it).
    """

    def __init__(self, ca: DevCA, authorizer: Authorizer, methods: Iterable[str]) -> None:
        self.ca = ca
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for path in methods:
            service, name = path[1:].split("/")
            by_service.setdefault(service, {})[name] = grpc.unary_unary_rpc_method_handler(_gated(authorizer, path))
        svid = ca.issue(SERVER_ID, HOUR)
        creds = grpc.ssl_server_credentials(
            [(_key_pem(svid), certs_pem(svid.chain))], root_certificates=certs_pem(ca.bundle),
            require_client_auth=True,
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        for service, handlers in by_service.items():
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self.port = self._server.add_secure_port("127.0.0.1:0", creds)
        self._server.start()
        self._channels: list[grpc.Channel] = []

    def channel(self, spiffe_id: str) -> grpc.Channel:
        svid = self.ca.issue(spiffe_id, HOUR)
        creds = grpc.ssl_channel_credentials(certs_pem(self.ca.bundle), _key_pem(svid), certs_pem(svid.chain))
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.port}", creds, options=[("grpc.ssl_target_name_override", dns_name_for(SERVER_ID))]
        )
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._server.stop(None).wait()

    def __enter__(self) -> AuthorizedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def status(channel: grpc.Channel, method: str, metadata: Iterable[tuple[str, str]] = ()) -> str:
    """Call ``method`` and return the status code name a client sees (``OK`` when it ran)."""
    try:
        channel.unary_unary(method)(b"", metadata=tuple(metadata), timeout=10)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"
