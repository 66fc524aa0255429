"""Is gRPC really verifying spiffe-id peers with SPIFFE bundle maps (gRFC A87)? A probe at start.

gRPC's A87 support is experimental. What grpcio 1.85.3 does (pinned by
tests/test_xds_a87.py):

* it reads a provider's ``spiffe_bundle_map_file`` only when
  ``GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE`` is true, each time it creates the
  xDS client of a new target (not once per process): without it, a provider
  with only a map is refused ("Failed to create XdsClient ...") and every
  call to the peer fails;
* with a ``ca_certificate_file`` beside the map and the variable unset, it
  silently verifies with that flat file: a CA of one trust domain vouches
  for an ID of another. meshnode never writes a CA file beside a map.

:meth:`Bootstrap.check_in_force <meshnode.xds.bootstrap.Bootstrap.check_in_force>`
checks the configuration; this probe checks what the running gRPC does with
it, once, when the control plane starts, with two throwaway trust domains
``A`` and ``B`` in the probe provider's map:

* ``honest``: a local server presenting an SVID of A's CA for an ID in A.
  gRPC must complete the handshake (the call then ends UNIMPLEMENTED): it
  reads the map and verifies with it;
* ``forged``: a local server presenting an SVID of B's CA for the same ID
  in A. gRPC must refuse it (CERTIFICATE_VERIFY_FAILED): it picks the bundle
  by the presented ID's trust domain, never a flat list of every root.

Anything else stops the start with a :class:`~meshnode.errors.PeerError`.
The probe CAs' keys are dropped once they have signed; the probe's server
and channels live only while it runs. Its two xDS resources (reserved names
``meshnode.a87-probe.*``) stay served until the control plane closes:
removed at once, gRPC logs a resolver error for each probe channel it is
still tearing down. Nothing dials them after the probe, and nothing could
pass their verification (the probe CAs' keys are gone).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshnode.errors import PeerError
from meshnode.identity.snapshot import utcnow
from meshnode.spiffeid import parse_spiffe_id
from meshnode.xds.bootstrap import IDENTITY_PROVIDER, PROBE_PROVIDER
from meshnode.xds.credentials import channel_credentials
from meshnode.xds.files import spiffe_bundle_map
from meshnode.xds.resources import CLUSTER_TYPE, LISTENER_TYPE, PeerTarget, cluster, listener

__all__ = ["PROBE_PEERS", "PROBE_TRUST_DOMAINS", "ProbeKit", "probe_bundle_maps", "probe_kit"]

PROBE_TRUST_DOMAINS = ("a87-probe-a.meshnode.invalid", "a87-probe-b.meshnode.invalid")
PROBE_ID = f"spiffe://{PROBE_TRUST_DOMAINS[0]}/probe"
#: Resource names of the probe peers; peer names starting with "meshnode.a87-probe" are reserved.
PROBE_PEERS = ("meshnode.a87-probe.honest", "meshnode.a87-probe.forged")
_METHOD = "/meshnode.A87Probe/Check"


@dataclass(frozen=True)
class ProbeKit:
    """The probe's bundle map and the two server identities (key PEM, chain PEM)."""

    map_document: bytes
    honest: tuple[bytes, bytes]
    forged: tuple[bytes, bytes]
    roots: tuple[x509.Certificate, ...]  # the CAs of the map (their keys are gone)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None, uri: str,
                 key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer, issuer_name = issuer if issuer is not None else (key, name)
    now = utcnow()
    ca = issuer is None
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(signer, hashes.SHA256())
    )


def probe_kit() -> ProbeKit:
    """Two throwaway CAs (their keys dropped here), their map, and the honest and forged server SVIDs."""
    cas: list[x509.Certificate] = []
    servers: list[tuple[bytes, bytes]] = []
    for td in PROBE_TRUST_DOMAINS:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate(f"meshnode A87 probe CA {td}", None, f"spiffe://{td}", ca_key)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate("meshnode A87 probe", (ca_key, ca.subject), PROBE_ID, leaf_key)
        cas.append(ca)
        servers.append((_pem_key(leaf_key), leaf.public_bytes(serialization.Encoding.PEM)))
    document = spiffe_bundle_map({td: (ca,) for td, ca in zip(PROBE_TRUST_DOMAINS, cas, strict=True)})
    return ProbeKit(document, servers[0], servers[1], tuple(cas))


def probe_resources(ports: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """A Listener and a Cluster per probe peer (name -> local port), verified with the probe's map."""
    target = parse_spiffe_id(PROBE_ID)
    clusters = {
        name: cluster(name, PeerTarget(f"127.0.0.1:{port}", target), roots_provider=PROBE_PROVIDER,
                      identity_provider=IDENTITY_PROVIDER)
        for name, port in ports.items()
    }
    return {LISTENER_TYPE: {name: listener(name) for name in ports}, CLUSTER_TYPE: clusters}


async def _attempt(name: str, timeout: float) -> grpc.aio.AioRpcError:
    """One call to probe peer ``name`` on a new channel; the error it ends with (it always ends in one)."""
    async with grpc.aio.secure_channel(f"xds:///{name}", channel_credentials()) as channel:
        try:
            await channel.unary_unary(_METHOD)(b"", timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return err
    raise PeerError(reason="the A87 probe server answered a call it has no handler for",
                    component="xds")  # never happens


def _handshake_passed(err: grpc.aio.AioRpcError) -> bool:
    return bool(err.code() == grpc.StatusCode.UNIMPLEMENTED)  # TLS done, the server knows no such method


async def probe_bundle_maps(
    kit: ProbeKit, publish: Callable[[Mapping[str, Mapping[str, Any]]], None], *, timeout: float = 20.0,
) -> float:
    """Run the probe; returns the seconds it took. Raises PeerError when gRPC does not apply the maps.

    ``publish(resources)`` makes the control plane serve ``resources`` beside its peers'.
    """
    started = time.monotonic()
    deadline = started + timeout
    server = grpc.aio.server()
    try:
        ports = {
            PROBE_PEERS[0]: server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([kit.honest])),
            PROBE_PEERS[1]: server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([kit.forged])),
        }
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise PeerError(reason=f"the gRFC A87 probe cannot listen on 127.0.0.1 (is loopback up?): {exc}",
                        component="xds") from None
    await server.start()
    try:
        publish(probe_resources(ports))
        honest = await _until(PROBE_PEERS[0], deadline, lambda e: _handshake_passed(e) or _refused(e))
        if not _handshake_passed(honest):
            raise PeerError(
                reason="gRPC did not verify a peer with a SPIFFE bundle map (gRFC A87) at start; meshnode "
                f"verifies spiffe-id peers only that way. Run a grpcio that supports it (this is grpcio "
                f"{grpc.__version__}; 1.85 is verified) or use verify = \"dns\" peers. "
                f"[{honest.code().name}: {honest.details()}]", component="xds"
            )
        forged = await _until(PROBE_PEERS[1], deadline, lambda e: _handshake_passed(e) or _verify_failed(e))
        if _handshake_passed(forged):
            raise PeerError(
                reason="gRPC accepted a certificate of one trust domain's CA for an ID of another while "
                "verifying with a SPIFFE bundle map: it uses the map as a flat root list, not per trust domain "
                f"(gRFC A87). Refusing spiffe-id peers on this grpcio ({grpc.__version__}); use verify = \"dns\"",
                component="xds"
            )
        if not _verify_failed(forged):
            raise PeerError(
                reason=f"the gRFC A87 probe could not finish: [{forged.code().name}: {forged.details()}]",
                component="xds"
            )
    finally:
        await server.stop(None)
    return time.monotonic() - started


def _refused(err: grpc.aio.AioRpcError) -> bool:
    """gRPC's answer is final: it refused the bootstrap, or the handshake (not a warm-up delay)."""
    details = err.details() or ""
    final = ("Failed to create XdsClient", "CERTIFICATE_VERIFY_FAILED", "handshake", "Handshake")
    return bool(err.code() == grpc.StatusCode.UNAVAILABLE) and any(text in details for text in final)


def _verify_failed(err: grpc.aio.AioRpcError) -> bool:
    return bool(err.code() == grpc.StatusCode.UNAVAILABLE) and "CERTIFICATE_VERIFY_FAILED" in (err.details() or "")


async def _until(
    name: str, deadline: float, done: Callable[[grpc.aio.AioRpcError], bool]
) -> grpc.aio.AioRpcError:
    """Call probe peer ``name`` until ``done(error)`` or the deadline (xDS and the file watcher warm up)."""
    while True:
        left = deadline - time.monotonic()
        err = await _attempt(name, max(min(left, 5.0), 0.1))
        if done(err) or left <= 0:
            return err
        await asyncio.sleep(0.05)
