"""Support for the xDS tests: certificates, a who-called-me server, the scenario runner.

Scenarios live in tests/support/xds_scenarios.py, one per process
(``python -m tests.support.xds_scenarios NAME [JSON-ARGS]``): gRPC reads its xDS
bootstrap from the environment of the process, so every scenario that opens
an ``xds:///`` channel runs in a fresh interpreter and prints one line
``RESULT <json>`` for the tests (tests/test_xds_*.py) to assert on.

Servers are plain grpc.aio servers with mTLS. Certificates come from
meshnode's dev CA (URI SAN only, SPIRE's default profile) or, for the
hostile ones meshnode's CA refuses to make, from :class:`RawCA`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem, utcnow
from meshnode.testing import issue_snapshot

ROOT = Path(__file__).resolve().parent.parent.parent
HOUR = dt.timedelta(hours=1)
METHOD = "/meshnode.test.Who/Who"


def run_scenario(name: str, args: dict[str, Any] | None = None, *, timeout: float = 90,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter; returns its RESULT (raises on a crash)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_XDS", "GRPC_EXPERIMENTAL_XDS"))}
    clean.setdefault("GRPC_VERBOSITY", "NONE")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.xds_scenarios", name, json.dumps(args or {})],
        cwd=ROOT, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            return result
    raise AssertionError(f"scenario {name} exited {proc.returncode} without a result:\n{proc.stderr[-4000:]}")


# -- certificates -------------------------------------------------------------


class RawCA:
    """A bare CA for certificates meshnode's issuers refuse to make (hostile cases)."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {uuid.uuid4().hex[:6]}")])
        now = utcnow()
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, uris: Sequence[str] = (), dns: Sequence[str] = ()) -> tuple[bytes, bytes]:
        """(key PEM, chain PEM) with exactly these SANs."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        now = utcnow()
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "t")]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + HOUR)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def svid_pems(ca: DevCA, spiffe_id: str) -> tuple[bytes, bytes]:
    issued = ca.issue(spiffe_id, HOUR, map_dns=False)
    return pem_key(issued.private_key), certs_pem(issued.chain)


def serial_of(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


# -- a server that says who called ------------------------------------------


class WhoServer:
    """mTLS grpc.aio server; answers with its name and the caller's certificate serial.

    ``set_identity`` changes what new handshakes present and trust.
    """

    def __init__(self, name: str, key: bytes, chain: bytes, roots: bytes, *, options: Sequence[Any] = ()) -> None:
        self.name = name
        self.calls: list[tuple[float, str]] = []
        self._config = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)
        self._pending: Any = None
        self.server = grpc.aio.server(options=list(options))
        handler = grpc.unary_unary_rpc_method_handler(self._who)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("meshnode.test.Who",
                                                                                   {"Who": handler})])
        creds = grpc.dynamic_ssl_server_credentials(self._config, self._fetch, require_client_authentication=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_identity(self, key: bytes, chain: bytes, roots: bytes) -> None:
        self._pending = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def _fetch(self) -> Any:
        pending, self._pending = self._pending, None
        return pending

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        serial = serial_of(pem)
        self.calls.append((time.monotonic(), serial))
        return json.dumps({"server": self.name, "client_serial": serial}).encode()

    async def __aenter__(self) -> WhoServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(None)


async def who(channel: grpc.aio.Channel, timeout: float = 5.0) -> dict[str, Any]:
    reply: bytes = await channel.unary_unary(METHOD)(b"", timeout=timeout)
    result: dict[str, Any] = json.loads(reply)
    return result


async def attempt(channel: grpc.aio.Channel, timeout: float = 5.0) -> dict[str, Any]:
    """One call: {"ok": True, ...reply} or {"ok": False, "code": ..., "details": ...}."""
    try:
        return {"ok": True, **await who(channel, timeout)}
    except grpc.aio.AioRpcError as err:
        return {"ok": False, "code": err.code().name, "details": err.details() or "", "error": err}


def public(outcome: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k != "error"}


async def poll(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


def snapshot_of(ca: DevCA, spiffe_id: str, extra: Mapping[str, Sequence[x509.Certificate]] = {}) -> IdentitySnapshot:
    """An SVID (URI SAN only) from ``ca``, with ``ca``'s bundle plus ``extra`` bundles."""
    snap = issue_snapshot(ca, spiffe_id, map_dns=False)
    bundles = {**snap.bundles, **{td: tuple(certs) for td, certs in extra.items()}}
    return IdentitySnapshot(snap.spiffe_id, snap.chain, snap.private_key, bundles)
