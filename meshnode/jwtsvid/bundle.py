"""JWT bundles: the JWT-SVID signing keys of each trust domain, by key id.

Where they come from, and what each may hold:

* the Workload API's ``FetchJWTBundles`` (a standard JWK Set per trust
  domain, keyed by the trust domain's SPIFFE ID; spec 6.2.2: only JWT-SVID
  keys): :func:`parse_jwks` takes keys whose ``use`` is ``jwt-svid`` or
  absent (go-spiffe and SPIRE write no ``use`` in a plain JWKS);
* a SPIFFE bundle document (Trust Domain and Bundle 4.2.2: ``use`` MUST be
  set; unknown uses are ignored): :func:`parse_spiffe_jwt_bundle` takes only
  ``"use": "jwt-svid"`` keys and skips ``x509-svid`` ones, so the file
  ``spire-server bundle show -format spiffe`` writes works as it is.

Every key taken must have a ``kid`` (no two alike), a ``kty`` of ``EC``
(P-256, P-384, P-521) or ``RSA`` (at least 2048 bits): the key types of
the algorithms the JWT-SVID spec allows. A key that carries private
material (``d``, ``p``, ...) refuses the whole document: a bundle is
public, and one that leaks a signing key is a mistake to stop at. A key
of another type (``OKP``, ``oct``) is skipped and named in ``ignored``.

A :class:`JwtBundleSet` is immutable; sources publish a new one (with a
higher ``generation``) on every change, and validators re-verify a cached
token when the set they verified it against is no longer the current one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from meshnode.errors import InvalidBundleError
from meshnode.identity.bundle_dir import BundleKind
from meshnode.identity.bundle_file import read_bundle_document, shown

__all__ = [
    "JWT_BUNDLES",
    "JWT_USE",
    "JwtBundle",
    "JwtBundleSet",
    "PublicKey",
    "merge_bundles",
    "parse_jwks",
    "parse_spiffe_jwt_bundle",
]

JWT_USE = "jwt-svid"
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES = {"P-256", "P-384", "P-521"}
MIN_RSA_BITS = 2048


@dataclass(frozen=True, eq=False)
class JwtBundle:
    """The JWT-SVID keys of one trust domain, by key id."""

    trust_domain: str
    keys: Mapping[str, PublicKey]
    sequence: int | None = None
    ignored: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    def __repr__(self) -> str:
        return f"JwtBundle(trust_domain='{self.trust_domain}', kids={sorted(self.keys)})"


@dataclass(frozen=True, eq=False)
class JwtBundleSet:
    """Every trust domain's JWT bundle at one generation (immutable)."""

    bundles: Mapping[str, JwtBundle]
    generation: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundles", MappingProxyType(dict(self.bundles)))

    def key(self, trust_domain: str, kid: str) -> PublicKey | None:
        bundle = self.bundles.get(trust_domain)
        return None if bundle is None else bundle.keys.get(kid)

    def __repr__(self) -> str:
        return f"JwtBundleSet(generation={self.generation}, trust_domains={sorted(self.bundles)})"


def _key(i: int, jwk: Mapping[str, Any], trust_domain: str) -> PublicKey | str:
    """The public key of JWK ``i``, or why the spec has it skipped; raises InvalidBundleError."""
    kty = jwk.get("kty")
    private = sorted(_PRIVATE & set(jwk))
    if private:
        raise InvalidBundleError(f"key {i} holds private key material ({', '.join(private)}): a bundle holds "
                                 "public keys only; never publish a signing key", trust_domain=trust_domain)
    if kty not in ("EC", "RSA"):
        return f"key {i} has kty {shown(kty)}, not EC or RSA (the key types of JWT-SVID algorithms)"
    if kty == "EC" and jwk.get("crv") not in _CURVES:
        raise InvalidBundleError(f"key {i}: crv {shown(jwk.get('crv'))} is not P-256, P-384 or P-521",
                                 trust_domain=trust_domain)
    try:
        loaded = (ECAlgorithm if kty == "EC" else RSAAlgorithm).from_jwk(json.dumps(dict(jwk)))
    except Exception:  # InvalidKeyError, ValueError, KeyError...: outside input, one clear reason
        raise InvalidBundleError(f"key {i} ({kty}) is not a valid public key", trust_domain=trust_domain) from None
    if isinstance(loaded, ec.EllipticCurvePublicKey):
        return loaded
    if isinstance(loaded, rsa.RSAPublicKey):
        if loaded.key_size < MIN_RSA_BITS:
            return f"key {i} is a {loaded.key_size}-bit RSA key (at least {MIN_RSA_BITS} bits are accepted)"
        return loaded
    raise InvalidBundleError(f"key {i} is not a public key", trust_domain=trust_domain)


def _bundle(
    keys: Iterable[Mapping[str, Any]], trust_domain: str, *, use_required: bool, sequence: int | None = None
) -> JwtBundle:
    taken: dict[str, PublicKey] = {}
    ignored: list[str] = []
    for i, jwk in enumerate(keys):
        use = jwk.get("use")
        if use != JWT_USE and (use_required or use is not None):
            if use != "x509-svid":  # X.509 CAs share SPIFFE bundles: not worth a word
                ignored.append(f"key {i} has \"use\": {shown(use)}, not \"{JWT_USE}\"")
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidBundleError(f"key {i} has no kid (a JWT-SVID key is found by its key id)",
                                     trust_domain=trust_domain)
        if kid in taken:
            raise InvalidBundleError(f"two keys have the kid {shown(kid)}", trust_domain=trust_domain)
        key = _key(i, jwk, trust_domain)
        if isinstance(key, str):
            ignored.append(key)
            continue
        taken[kid] = key
    return JwtBundle(trust_domain, taken, sequence, tuple(ignored))


def parse_jwks(data: bytes, trust_domain: str) -> JwtBundle:
    """The JWT bundle of a standard JWK Set (a Workload API ``FetchJWTBundles`` value); raises InvalidBundleError.

    A set with no key left is a valid, empty bundle (a trust domain with no JWT keys yet).
    """
    document = read_bundle_document(data, trust_domain)
    return _bundle(document.keys, trust_domain, use_required=False)


def parse_spiffe_jwt_bundle(data: bytes, trust_domain: str) -> JwtBundle:
    """The JWT-SVID keys of a SPIFFE bundle document (a ``<trust-domain>.json`` file); raises InvalidBundleError.

    A document without any ``jwt-svid`` key is refused: in a directory of JWT
    bundles it is a mistake (remove the file to trust none of its keys).
    """
    document = read_bundle_document(data, trust_domain)
    bundle = _bundle(document.keys, trust_domain, use_required=True, sequence=document.sequence)
    if not bundle.keys:
        found = "; ".join(bundle.ignored) or "'keys' holds no \"jwt-svid\" key"
        raise InvalidBundleError(f"holds no JWT-SVID key (\"use\": \"{JWT_USE}\" with a kid): {found}",
                                 trust_domain=trust_domain)
    return bundle


def _describe(bundle: JwtBundle) -> str:
    n = len(bundle.keys)
    return f"{n} JWT key{'' if n == 1 else 's'}"


def _same(bundle: JwtBundle) -> JwtBundle:
    return bundle


#: ``[identity] jwt_bundles_dir``: ``<trust-domain>.json`` SPIFFE bundles; the node's own trust domain may
#: have one (with source = "files" nothing else gives its JWT keys).
JWT_BUNDLES: BundleKind[JwtBundle] = BundleKind(
    "jwt_bundles_dir", "JWT bundle", {".json": parse_spiffe_jwt_bundle}, _same, _describe, own_allowed=True,
    gone="its JWT-SVIDs are not accepted unless another source delivers its JWT bundle",
)


def merge_bundles(*sets: Mapping[str, JwtBundle]) -> dict[str, JwtBundle]:
    """One bundle per trust domain from several sources: the union of their keys; on a kid both have,
    the earlier source's key wins."""
    out: dict[str, JwtBundle] = {}
    for bundles in reversed(sets):
        for td, bundle in bundles.items():
            have = out.get(td)
            keys = {**have.keys, **bundle.keys} if have is not None else dict(bundle.keys)
            out[td] = JwtBundle(td, keys)
    return out
