"""Shared pieces of the authz tests: CAs, odd client certificates, an mTLS server and clients.

No tests here. Normal SVIDs come from :class:`DevCA`; certificates a
well-behaved CA would never issue (no URI SAN, two, a malformed ID, an ID
of another trust domain) come from :class:`RawCA`, built with cryptography
directly and trusted by the test server alongside the dev CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshnode.devagent.ca import DevCA, IssuedSVID
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import dns_name_for

SERVER_ID = "spiffe://example.org/node/server"
SERVER_NAME = dns_name_for(SERVER_ID)
HOUR = dt.timedelta(hours=1)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class ClientCert:
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def of(cls, svid: IssuedSVID) -> ClientCert:
        return cls(svid.private_key, svid.chain)


class RawCA:
    """A CA that signs whatever it is told to (for certificates DevCA refuses to make)."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        *,
        cn: str = "odd client",
        ca: bool = False,
        key_cert_sign: bool = False,
    ) -> ClientCert:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + HOUR)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if key_cert_sign:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return ClientCert(key, (builder.sign(self.key, hashes.SHA256()),))


@dataclass
class Served:
    port: int
    server: grpc.aio.Server

    def channel(self, client: ClientCert, roots: bytes) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(roots, key_pem(client.key), certs_pem(client.chain))
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )

    def sync_channel(self, client: ClientCert, roots: bytes) -> grpc.Channel:
        """A sync client: grpc.aio clients that are still writing when a bidi call is refused
        report INTERNAL ("Internal error from Core") instead of the status the server sent."""
        creds = grpc.ssl_channel_credentials(roots, key_pem(client.key), certs_pem(client.chain))
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}", creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )


@asynccontextmanager
async def serve(
    ca: DevCA,
    register: Callable[[grpc.aio.Server], None],
    *,
    extra_roots: Iterable[x509.Certificate] = (),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> AsyncIterator[Served]:
    """An mTLS grpc.aio server on loopback that requires client certificates."""
    svid = ca.issue(SERVER_ID, HOUR)
    roots = certs_pem(ca.bundle) + certs_pem(extra_roots)
    creds = grpc.ssl_server_credentials(
        [(key_pem(svid.private_key), certs_pem(svid.chain))], root_certificates=roots, require_client_auth=True
    )
    server = grpc.aio.server(interceptors=list(interceptors))
    register(server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield Served(port, server)
    finally:
        await server.stop(None)


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Await a call (or drain a stream) and return its status code and details."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
