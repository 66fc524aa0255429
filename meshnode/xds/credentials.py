"""Channel credentials for ``xds:///`` peers, failing closed.

``grpc.xds_channel_credentials(fallback)`` uses ``fallback`` for a target
whose Cluster carries no TLS config. With insecure fallback credentials
such a Cluster means plaintext to the peer; gRPC's own default (the system
roots) would accept any public certificate for the peer's name. meshnode's
control plane always sends TLS config, and in case anything ever does not,
the fallback is TLS that can verify nothing: its only root is a CA made
in this process whose private key is dropped as soon as it has signed
itself, so no server certificate can chain to it.
"""

from __future__ import annotations

import datetime as dt
import functools

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshnode.identity.snapshot import utcnow

__all__ = ["channel_credentials", "verify_nothing_roots"]


@functools.cache
def verify_nothing_roots() -> bytes:
    """PEM roots no certificate chains to (the signing key is gone)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshnode: no trusted roots")])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    del key
    return cert.public_bytes(serialization.Encoding.PEM)


@functools.cache
def channel_credentials() -> grpc.ChannelCredentials:
    """xDS channel credentials whose fallback (no TLS config from xDS) never connects."""
    fallback = grpc.ssl_channel_credentials(root_certificates=verify_nothing_roots())
    return grpc.xds_channel_credentials(fallback)
