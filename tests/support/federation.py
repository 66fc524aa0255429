"""Federated bundle files as writers make them, and node configs for the federation tests."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import certs_pem
from meshnode.testing import issue_snapshot


def _b64url_int(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def x509_key(cert: x509.Certificate) -> dict[str, Any]:
    """The JWK ``spire-server bundle show -format spiffe`` writes for an X.509 CA."""
    der = cert.public_bytes(serialization.Encoding.DER)
    key = cert.public_key()
    jwk: dict[str, Any] = {"use": "x509-svid"}
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers, size = key.public_numbers(), (key.curve.key_size + 7) // 8
        jwk |= {"kty": "EC", "crv": f"P-{key.curve.key_size}", "x": _b64url_int(numbers.x, size),
                "y": _b64url_int(numbers.y, size)}
    elif isinstance(key, rsa.RSAPublicKey):
        rsa_numbers = key.public_numbers()
        jwk |= {"kty": "RSA", "n": _b64url_int(rsa_numbers.n, (key.key_size + 7) // 8), "e": "AQAB"}
    return jwk | {"x5c": [base64.b64encode(der).decode()]}


def jwt_key() -> dict[str, Any]:
    """A JWT-SVID signing key entry, as SPIRE lists it beside the X.509 CAs."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return {"use": "jwt-svid", "kty": "EC", "kid": "jwt-key-1", "crv": "P-256",
            "x": _b64url_int(numbers.x, 32), "y": _b64url_int(numbers.y, 32)}


def spiffe_bundle(
    cas: Iterable[x509.Certificate], *, sequence: int | None = 1, refresh_hint: int | None = 300,
    jwt: bool = True, extra_keys: Sequence[dict[str, Any]] = (),
) -> bytes:
    """A SPIFFE bundle document in SPIRE's layout (X.509 CAs, a JWT key, sequence and refresh hint)."""
    doc: dict[str, Any] = {"keys": [x509_key(c) for c in cas] + ([jwt_key()] if jwt else []) + list(extra_keys)}
    if sequence is not None:
        doc["spiffe_sequence"] = sequence
    if refresh_hint is not None:
        doc["spiffe_refresh_hint"] = refresh_hint
    return json.dumps(doc, indent=4).encode()


def bundle_bytes(ca: DevCA, fmt: str) -> bytes:
    """``ca``'s bundle as a ``.json`` (SPIFFE) or ``.pem`` file content."""
    return spiffe_bundle(ca.bundle) if fmt == "json" else certs_pem(ca.bundle)


def atomic_write(path: Path, data: bytes) -> None:
    """Write as careful writers do: a dotfile in the same directory, renamed over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def svid_files(directory: Path, ca: DevCA, spiffe_id: str) -> str:
    """Write cert.pem, key.pem and bundle.pem for ``spiffe_id``; the [identity] lines for the files source."""
    snap = issue_snapshot(ca, spiffe_id)
    (directory / "cert.pem").write_bytes(snap.chain_pem)
    (directory / "key.pem").write_bytes(snap.key_pem)
    (directory / "bundle.pem").write_bytes(snap.bundle_pem(ca.trust_domain))
    return (f'source = "files"\ncert = "{directory / "cert.pem"}"\nkey = "{directory / "key.pem"}"\n'
            f'bundle = "{directory / "bundle.pem"}"\ntrust_domain = "{ca.trust_domain}"\n')
