"""One federated bundle file: ``<trust-domain>.json`` (a SPIFFE bundle) or ``<trust-domain>.pem``.

A SPIFFE bundle is the JWK Set of the SPIFFE Trust Domain and Bundle spec
(section 4), as ``spire-server bundle show -format spiffe`` writes it::

    {"spiffe_sequence": 3, "spiffe_refresh_hint": 300,
     "keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["<base64 DER>"], "crv": "P-256", "x": "..", "y": ".."},
              {"kty": "EC", "use": "jwt-svid", "kid": "..", "crv": "P-256", "x": "..", "y": ".."}]}

What the specs make a consumer do (Trust Domain and Bundle 4.1-4.2,
X509-SVID 6.2), and meshnode does:

* ``keys`` must be present; members it does not know are allowed;
* a key with an unknown ``kty``, or a ``use`` other than ``x509-svid``
  (``jwt-svid`` keys, anything else; uses are case-sensitive) is ignored;
* an ``x509-svid`` key without ``x5c``, or with an empty one, is ignored;
  the first ``x5c`` value is the CA certificate, further values are ignored;
* the X.509 authorities are the union of those certificates.

What meshnode refuses on top (the whole file; the directory keeps the last
good bundle of the trust domain): bytes that are not one JSON object (also
``NaN``, a repeated member name, nesting too deep), ``keys`` that is not a
list of objects, an ``x509-svid`` key whose ``x5c`` is not a list of
base64 strings or whose first value is not a DER certificate, a ``kty``
that does not match that certificate's key, ``spiffe_sequence`` or
``spiffe_refresh_hint`` that is not a non-negative integer, and a document
with no X.509 authority left (only JWT keys, keys with another ``use``,
no ``x5c``): in a directory of federated bundles that is a mistake, never
a wish to trust nobody (remove the file for that).

Every certificate, from JSON or PEM, must parse completely, be a CA, and
name no other trust domain in a ``spiffe://`` URI SAN: a CA of
``other.org`` in ``partner.org.json`` would vouch for ``other.org`` IDs
wherever partner.org's bundle is trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from meshnode.errors import InvalidBundleError, InvalidIdentityError, InvalidSpiffeIdError
from meshnode.identity.x509svid import check_parses, uri_sans
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["FORMATS", "MAX_BUNDLE_BYTES", "FederatedBundle", "parse_pem_bundle", "parse_spiffe_bundle"]

#: File name suffix -> format. Other files in the directory are not bundles.
FORMATS = {".json": "spiffe", ".pem": "pem"}
#: A bundle file larger than this is refused (a bundle holds a few CA certificates).
MAX_BUNDLE_BYTES = 1 << 20
X509_USE = "x509-svid"
_KNOWN_KTY = frozenset({"EC", "RSA", "OKP", "oct"})  # RFC 7518 section 6.1, RFC 8037


@dataclass(frozen=True)
class FederatedBundle:
    """The X.509 authorities of one trust domain, as read from one file."""

    trust_domain: str
    authorities: tuple[x509.Certificate, ...]
    sequence: int | None = None  # spiffe_sequence, when the document has one
    refresh_hint: int | None = None  # spiffe_refresh_hint (seconds), when the document has one
    #: keys the spec made meshnode skip that look like mistakes, one phrase each (JWT keys are not listed)
    ignored: tuple[str, ...] = field(default=())


def parse_pem_bundle(data: bytes, trust_domain: str) -> FederatedBundle:
    """The CAs of a PEM file; raises InvalidBundleError (its ``reason`` says what is wrong)."""
    if not data.strip():
        raise InvalidBundleError("is empty", trust_domain=trust_domain)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidBundleError(f"not a PEM certificate list ({exc})", trust_domain=trust_domain) from None
    if not certs:
        raise InvalidBundleError("holds no certificate", trust_domain=trust_domain)
    return FederatedBundle(trust_domain, _authorities(certs, trust_domain))


def parse_spiffe_bundle(data: bytes, trust_domain: str) -> FederatedBundle:
    """The X.509 authorities of a SPIFFE bundle document; raises InvalidBundleError."""
    doc = _json_object(data, trust_domain)
    sequence = _count(doc, "spiffe_sequence", trust_domain)
    refresh_hint = _count(doc, "spiffe_refresh_hint", trust_domain)
    keys = doc.get("keys")
    if not isinstance(keys, list):
        what = "is missing" if keys is None and "keys" not in doc else f"is {_a(_kind(keys))}, not a list"
        raise InvalidBundleError(f"'keys' {what} (a SPIFFE bundle is a JWK Set)", trust_domain=trust_domain)
    certs: list[x509.Certificate] = []
    skipped: list[str] = []  # every key left out, for the error when nothing is left
    ignored: list[str] = []  # the ones worth a warning when the rest is usable
    for i, key in enumerate(keys):
        if not isinstance(key, dict):
            raise InvalidBundleError(f"key {i} is {_a(_kind(key))}, not a JSON object", trust_domain=trust_domain)
        cert, why = _x509_key(i, key, trust_domain)
        if cert is not None:
            certs.append(cert)
        else:
            skipped.append(why)
            if key.get("use") != "jwt-svid":
                ignored.append(why)
    if not certs:
        found = "; ".join(skipped) if skipped else "'keys' is empty"
        raise InvalidBundleError(
            f"holds no X.509 CA (a key with \"use\": \"{X509_USE}\" and an \"x5c\" certificate): {found}",
            trust_domain=trust_domain,
        )
    return FederatedBundle(trust_domain, _authorities(certs, trust_domain), sequence, refresh_hint, tuple(ignored))


def _x509_key(i: int, key: dict[str, Any], trust_domain: str) -> tuple[x509.Certificate | None, str]:
    """The CA certificate of key ``i``, or None and why the spec says to ignore the key."""
    use, kty = key.get("use"), key.get("kty")
    if use != X509_USE:
        if use == "jwt-svid":
            return None, f"key {i} is a JWT-SVID key (\"use\": \"jwt-svid\")"
        shown = "no \"use\"" if use is None else f"\"use\": {_shown(use)}"
        return None, f"key {i} has {shown}, not \"{X509_USE}\" (uses are case-sensitive)"
    if kty not in _KNOWN_KTY:
        return None, f"key {i} has an unknown key type ({'no kty' if kty is None else 'kty ' + _shown(kty)})"
    x5c = key.get("x5c")
    if x5c is None or x5c == []:
        return None, f"key {i} (\"use\": \"{X509_USE}\") has no \"x5c\" certificate"
    if not isinstance(x5c, list) or not all(isinstance(v, str) for v in x5c):
        raise InvalidBundleError(f"key {i}: 'x5c' is not a list of base64 strings", trust_domain=trust_domain)
    try:
        der = base64.b64decode(x5c[0], validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        reason = "is not base64" if isinstance(exc, binascii.Error) else "is not a DER certificate"
        raise InvalidBundleError(f"key {i}: x5c[0] {reason}", trust_domain=trust_domain) from None
    actual = _kty_of(cert)
    if kty != actual:
        raise InvalidBundleError(
            f"key {i}: kty {_shown(kty)} does not match its certificate's {actual} key", trust_domain=trust_domain
        )
    return cert, ""


def _authorities(certs: Sequence[x509.Certificate], trust_domain: str) -> tuple[x509.Certificate, ...]:
    """``certs`` without repeats, once each passed the CA checks (see the module docstring)."""
    out: dict[bytes, x509.Certificate] = {}
    for i, cert in enumerate(certs):
        what = f"certificate {i} (serial {cert.serial_number:x})"
        try:
            check_parses(cert, what)
        except InvalidIdentityError as exc:
            raise InvalidBundleError(exc.reason, trust_domain=trust_domain) from None
        _check_ca(cert, what, trust_domain)
        out.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)
    return tuple(out.values())


def _check_ca(cert: x509.Certificate, what: str, trust_domain: str) -> None:
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidBundleError(f"{what} is not a CA (no basicConstraints CA=true)", trust_domain=trust_domain)
    for uri in uri_sans(cert):
        if not uri.lower().startswith("spiffe:"):
            continue
        try:
            named = parse_spiffe_id(uri).trust_domain
        except InvalidSpiffeIdError:
            raise InvalidBundleError(
                f"{what} has the URI SAN {_shown(uri)}, which is not a SPIFFE ID", trust_domain=trust_domain
            ) from None
        if named != trust_domain:
            raise InvalidBundleError(
                f"{what} is a CA of trust domain '{named}' (URI SAN {_shown(uri)}), not of '{trust_domain}'",
                trust_domain=trust_domain,
            )


def _kty_of(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP"
    return type(key).__name__


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the member {_shown(name)} appears twice in one object")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, trust_domain: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise InvalidBundleError("is not UTF-8 text (a SPIFFE bundle is JSON)", trust_domain=trust_domain) from None
    except RecursionError:
        raise InvalidBundleError("is not JSON: nested too deeply", trust_domain=trust_domain) from None
    except ValueError as exc:  # JSONDecodeError, a repeated member, a number with too many digits
        raise InvalidBundleError(f"is not JSON: {_clip(str(exc), 160)}", trust_domain=trust_domain) from None
    if not isinstance(doc, dict):
        raise InvalidBundleError(
            f"is a JSON {_kind(doc)}, not an object (a SPIFFE bundle is a JWK Set)", trust_domain=trust_domain
        )
    return doc


def _count(doc: dict[str, Any], name: str, trust_domain: str) -> int | None:
    if name not in doc:
        return None
    value = doc[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidBundleError(
            f"'{name}' must be a non-negative integer, not {_shown(value)}", trust_domain=trust_domain
        )
    return value


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _kind(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _shown(value: object, limit: int = 60) -> str:
    """A value from the file, quoted and cut short: it is outside input."""
    return _clip(json.dumps(value) if isinstance(value, str) else repr(value), limit)


def _clip(text: str, limit: int) -> str:
    """One printable line of at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
