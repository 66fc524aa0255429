"""JWT-SVIDs for tests: tokens a well-behaved issuer would never sign, bundles, metadata.

The dev CA signs only what the JWT-SVID spec allows; a validator must also
be shown what an attacker or a broken issuer sends: ``alg: none``, an HMAC
token keyed with a public key, a subject in another trust domain, an
unknown key id, a tampered signature. :func:`forge` signs any header and
claims with any key through PyJWT.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshnode.jwtsvid.bundle import JwtBundle

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
GAMMA = "spiffe://example.org/node/gamma"
PROXY = "spiffe://example.org/node/proxy"
CLIENT = "spiffe://example.org/demo/client"


def claims(sub: str = ALPHA, aud: Any = BETA, ttl: float = 300.0, **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": aud, "iat": now, "exp": now + int(ttl), **more}


def forge(
    key: Any, payload: Mapping[str, Any], *, alg: str = "ES256", kid: str | None = "k1",
    headers: Mapping[str, Any] | None = None,
) -> str:
    """A compact JWS of ``payload`` signed by ``key`` with ``alg`` (``kid`` None: no kid)."""
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(dict(payload), key, algorithm=alg, headers=extra)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: Mapping[str, Any], *, kid: str = "k1") -> str:
    """``alg: none``: a header and payload with an empty signature."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(dict(payload)).encode())}."


def tampered(token: str) -> str:
    """``token`` with one byte of its signature changed."""
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    return f"{head}.{body}.{_b64(bytes(raw))}"


def with_payload(token: str, payload: Mapping[str, Any]) -> str:
    """``token``'s header and signature around another payload (a forged claim set)."""
    head, _, sig = token.split(".")
    return f"{head}.{_b64(json.dumps(dict(payload)).encode())}.{sig}"


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def bundle(trust_domain: str, **keys: Any) -> JwtBundle:
    """A bundle of the public halves of ``keys`` (kid -> private key)."""
    return JwtBundle(trust_domain, {kid: key.public_key() for kid, key in keys.items()})


def jwk(key: Any, kid: str, use: str | None = "jwt-svid") -> dict[str, Any]:
    """The public JWK of ``key``."""
    is_ec = isinstance(key, ec.EllipticCurvePrivateKey)
    algorithm = jwt.algorithms.ECAlgorithm if is_ec else jwt.algorithms.RSAAlgorithm
    out: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    out["kid"] = kid
    if use is not None:
        out["use"] = use
    return out


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
