"""X.509-SVID rules: parsing PEM, SPIFFE ID extraction, the SVID profile, snapshots.

One place for the checks every source and the authorization layer need.
Two layers, each doing what it is good at:

* the path: :func:`~meshnode.identity.x509chain.verify_chain`,
  cryptography's RFC 5280 verifier with extension policies for X509-SVIDs
  (signatures, validity at an explicit time, cA and path length,
  keyCertSign, name constraints, order-free path building);
* the SVID profile, which a path builder does not know: exactly one URI
  SAN, a valid SPIFFE ID with a path, not a CA, no keyCertSign/cRLSign, a
  critical SAN when the subject is empty, no DNS SAN spelled like a URI
  (:func:`spiffe_id_of`, :func:`check_leaf`), and that the private key
  matches. The bundle used is always the one of the leaf's own trust domain.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from meshnode.errors import InvalidIdentityError, InvalidSpiffeIdError
from meshnode.identity.rejects import describe_error
from meshnode.identity.snapshot import Bundles, IdentitySnapshot, utcnow
from meshnode.identity.x509chain import verify_chain
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

log = logging.getLogger("meshnode.identity")

__all__ = [
    "build_snapshot",
    "check_leaf",
    "check_parses",
    "load_pem_certs",
    "load_pem_key",
    "spiffe_id_of",
    "uri_sans",
]


def _invalid(reason: str) -> InvalidIdentityError:
    return InvalidIdentityError(f"identity: {reason}", reason=reason)


def load_pem_certs(data: bytes, what: str, *, check_extensions: bool = True) -> list[x509.Certificate]:
    """All certificates in PEM ``data``; raises InvalidIdentityError naming ``what``.

    With ``check_extensions`` (the default) every certificate's extensions
    are parsed too (see :func:`check_parses`).
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidIdentityError(reason=f"{what}: not a PEM certificate list ({exc})", component="identity") from None
    if not certs:
        raise InvalidIdentityError(reason=f"{what}: holds no certificate", component="identity")
    for i, cert in enumerate(certs if check_extensions else ()):
        check_parses(cert, f"{what}: certificate {i}")
    return certs


def check_parses(cert: x509.Certificate, what: str) -> None:
    """Parse ``cert``'s extensions now: cryptography parses them lazily and raises ValueError on
    malformed DER only when they are read - at the boundary, not later in a handshake or a check."""
    try:
        cert.extensions  # noqa: B018
    except ValueError as exc:
        raise _invalid(f"{what} has malformed extensions: {describe_error(exc)}") from None


def load_pem_key(data: bytes, what: str) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # never echo the file content: it is key material
        raise _invalid(f"{what}: not an unencrypted PEM private key ({type(exc).__name__})") from None
    return key  # type: ignore[return-value]


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_of(cert: x509.Certificate) -> SpiffeID:
    """The SPIFFE ID of an SVID leaf: its one and only URI SAN."""
    uris = uri_sans(cert)
    if len(uris) != 1:
        raise _invalid(f"certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    try:
        spiffe_id = parse_spiffe_id(uris[0])
    except InvalidSpiffeIdError as exc:
        raise _invalid(f"certificate URI SAN is not a SPIFFE ID: {exc}") from None
    if not spiffe_id.path:  # X509-SVID 3.1 and 5.2: a leaf's ID names a workload, not the trust domain
        raise _invalid(
            f"certificate URI SAN {spiffe_id} has no path; a leaf X.509-SVID names a workload "
            "(spiffe://trust-domain/path), never the trust domain itself"
        )
    return spiffe_id


#: What a DNS SAN may hold: host-name characters (and ``*`` for wildcards), never a scheme or a path.
_DNS_SAN = re.compile(r"[A-Za-z0-9*_.-]{1,253}")


def check_leaf(cert: x509.Certificate) -> None:
    """X509-SVID leaf rules (5.2 and 3.1): not a CA, may not sign certificates or CRLs, a critical
    SAN when the subject is empty, and no DNS SAN spelled like a URI.

    The X509-SVID spec allows DNS SANs beside the one URI SAN, but a DNS SAN
    such as ``spiffe://example.org/x`` is not a host name: gRPC's SAN
    matchers do not look at SAN types, so such a name would pass as a SPIFFE
    ID elsewhere in the mesh. A certificate carrying one is refused.
    """
    exts = cert.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise _invalid("SVID leaf has CA=true; a leaf SVID must not be a CA")
    except x509.ExtensionNotFound:
        pass
    try:
        san_ext: x509.Extension[x509.SubjectAlternativeName] | None = exts.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        san_ext = None
    if san_ext is not None and not san_ext.critical and len(cert.subject) == 0:
        raise _invalid(
            "SVID leaf has an empty subject and a non-critical SAN extension; without a subject the SAN "
            "must be critical (X509-SVID 3.1, RFC 5280 4.1.2.6)"
        )
    for name in san_ext.value.get_values_for_type(x509.DNSName) if san_ext is not None else ():
        if not _DNS_SAN.fullmatch(name):
            raise _invalid(
                f"certificate has a DNS SAN that is not a host name ({name[:80]!r}); "
                "SPIFFE IDs belong in the URI SAN only"
            )
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ku.key_cert_sign or ku.crl_sign:
        raise _invalid("SVID leaf has keyCertSign/cRLSign key usage")


def _key_matches(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(serialization.Encoding.DER, fmt) == key.public_key().public_bytes(
        serialization.Encoding.DER, fmt
    )


def build_snapshot(
    chain: Sequence[x509.Certificate],
    private_key: CertificateIssuerPrivateKeyTypes,
    bundles: Bundles,
    *,
    generation: int = 1,
    now: dt.datetime | None = None,
) -> IdentitySnapshot:
    """Validate an SVID with its key and bundles and wrap it in a snapshot.

    Raises InvalidIdentityError for every problem, also for a certificate
    that parsed but whose extensions do not (cryptography parses those
    lazily and raises ValueError).
    """
    try:
        return _build_snapshot(chain, private_key, bundles, generation, now)
    except InvalidIdentityError:
        raise
    except Exception as exc:  # malformed DER inside a certificate that loaded: outside input, not a bug
        raise InvalidIdentityError(
            reason=f"the SVID or its bundle cannot be parsed: {describe_error(exc)}", component="identity"
        ) from None


def _parsable_bundles(bundles: Bundles, own: str) -> dict[str, tuple[x509.Certificate, ...]]:
    """``bundles`` with every certificate parsed once: a malformed CA of the node's own trust domain
    rejects the update; a malformed CA of a federated trust domain is left out (with a warning), so
    a partner's broken bundle never stops this node's own rotations and never verifies anyone."""
    out: dict[str, tuple[x509.Certificate, ...]] = {}
    for td, certs in bundles.items():
        kept = []
        for i, cert in enumerate(certs):
            try:
                check_parses(cert, f"trust bundle of '{td}', certificate {i}")
            except InvalidIdentityError as exc:
                if td == own:
                    raise
                log.warning("identity: %s; leaving it out of the bundle", exc.reason)
                continue
            kept.append(cert)
        if kept:
            out[td] = tuple(kept)
    return out


def _build_snapshot(
    chain: Sequence[x509.Certificate],
    private_key: CertificateIssuerPrivateKeyTypes,
    bundles: Bundles,
    generation: int,
    now: dt.datetime | None,
) -> IdentitySnapshot:
    if not chain:
        raise InvalidIdentityError(reason="the SVID has no certificate", component="identity")
    for i, cert in enumerate(chain):
        check_parses(cert, f"SVID chain certificate {i}")
    leaf = chain[0]
    spiffe_id = spiffe_id_of(leaf)
    bundles = _parsable_bundles(bundles, spiffe_id.trust_domain)
    check_leaf(leaf)
    if not _key_matches(leaf, private_key):
        raise InvalidIdentityError(reason="the private key does not match the SVID certificate", component="identity")
    td = spiffe_id.trust_domain
    roots = bundles.get(td)
    if not roots:
        raise _invalid(f"no trust bundle for the SVID's own trust domain '{td}'")
    at = now or utcnow()
    try:
        verify_chain(chain, roots, at, usage="svid")
    except InvalidIdentityError as exc:
        raise _invalid(
            f"the SVID chain of {spiffe_id} does not verify against the trust bundle of '{td}' "
            f"at {at.isoformat(timespec='seconds')}: {exc.reason}"
        ) from None
    return IdentitySnapshot(spiffe_id, tuple(chain), private_key, bundles, generation)
