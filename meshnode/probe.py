"""Look at the certificate a TLS server presents, without trusting it.

With TLS 1.3 a client finishes its side of the handshake before the server
checks the client's certificate, so the server's leaf can be read without
presenting one. meshnode uses this for diagnostics only (``meshnode check``,
the demo): the result is never used to authenticate anyone.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from meshnode.errors import PeerError

__all__ = ["server_certificate"]


def server_certificate(address: str, timeout: float = 3.0) -> x509.Certificate:
    """The leaf certificate the TLS server at ``host:port`` presents."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # diagnostics only: the caller inspects the certificate itself
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        raise PeerError(f"probe: cannot complete a TLS handshake with {address}: {exc}") from None
    if der is None:
        raise PeerError(f"probe: {address} presented no certificate")
    return x509.load_der_x509_certificate(der)
