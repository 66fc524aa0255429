"""X.509 chain verification: cryptography's RFC 5280 verifier, configured for X509-SVIDs.

:func:`verify_chain` builds and validates the path from a leaf through any
intermediates (given in any order; certificates off the path are ignored;
it backtracks where several issuers fit) to a root of one bundle, with
``cryptography.x509.verification``: signatures, validity at an explicit
time, basicConstraints cA and path length, keyCertSign on every CA that
has a keyUsage, name constraints, critical extensions it does not know,
algorithms and key sizes. Its extension policies are the web PKI defaults
adjusted to X509-SVIDs (:func:`_extension_policies`). What a path builder does not know
about SPIFFE (one URI SAN, an ID with a path, ...) is
:mod:`meshnode.identity.x509svid`.

Errors: the verifier's message (the certificate it was processing, why) is
the ``reason`` of the InvalidIdentityError, as it is, never parsed; on the
failure path meshnode adds facts that help find the link (certificates
outside their validity, a CA with URI name constraints, the subjects
presented and trusted), none of which decides anything.

Cost: building the verifier per call is ~2 us (the extension policies are
built once); a call is dominated by one signature check per link (~85 us
for P-256 here).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Literal

from cryptography import x509
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshnode.errors import InvalidIdentityError
from meshnode.identity.rejects import describe_error
from meshnode.identity.snapshot import utcnow

__all__ = ["Usage", "trust_store", "verify_chain"]


def _invalid(reason: str) -> InvalidIdentityError:
    return InvalidIdentityError(f"identity: {reason}", reason=reason)


#: What a verified certificate is used for, and so which EKUs its chain must allow (when it lists any):
#: ``"svid"`` a node's own SVID, served and presented as a client (X509-SVID 4.4: serverAuth and clientAuth);
#: ``"client"`` a caller's certificate (clientAuth, what the TLS layer already asked of it).
Usage = Literal["svid", "client"]
_REQUIRED_EKUS: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "svid": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
}
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
_MAX_REASON = 600


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _eku_check(
    required: tuple[x509.ObjectIdentifier, ...], *, ca: bool
) -> Callable[[xv.Policy, x509.Certificate, x509.ExtendedKeyUsage | None], None]:
    """An extension validator: a listed EKU must include every ``required`` one (a CA may say anyEKU)."""

    def check(_policy: xv.Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
        if eku is None or (ca and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku):
            return
        missing = [_EKU_NAMES[oid] for oid in required if oid not in eku]
        if missing:
            raise ValueError(f"extendedKeyUsage lacks {' and '.join(missing)}")

    return check


def _ca_basic_constraints(_policy: xv.Policy, _cert: x509.Certificate, bc: x509.BasicConstraints) -> None:
    if not bc.ca:
        raise ValueError("basicConstraints of an issuer does not assert cA")


def _ca_key_usage(_policy: xv.Policy, _cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    if ku is not None and not ku.key_cert_sign:  # RFC 5280 6.1.4 (n)
        raise ValueError("keyUsage of an issuer does not assert keyCertSign")


@functools.cache
def _extension_policies(usage: Usage) -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    """(CA policy, leaf policy): cryptography's web PKI defaults, adjusted to X509-SVIDs.

    CA (intermediates and the bundle's roots): basicConstraints must say
    cA, critical or not, and a keyUsage, when present, must assert
    keyCertSign - RFC 5280's path validation (6.1.4 (k), (n)), what gRPC's
    TLS layer and go-spiffe check, rather than the web PKI's issuance rules
    (a critical basicConstraints, a keyUsage always), which CAs made with
    common openssl configurations do not meet; an authorityKeyIdentifier is
    not examined; an EKU, when present, must allow what ``usage`` needs (or
    anyExtendedKeyUsage). Leaf: no authorityKeyIdentifier needed (the
    X509-SVID spec does not ask for one), an EKU may be critical (X509-SVID
    4.4) and, when present, must list what ``usage`` needs. Everything else
    - the path length, a leaf that is no CA and has no keyCertSign, name
    constraints, validity, signatures, algorithms and key sizes, critical
    extensions nobody knows - is cryptography's default.
    """
    required = _REQUIRED_EKUS[usage]
    ca = (
        xv.ExtensionPolicy.webpki_defaults_ca()
        .require_present(x509.BasicConstraints, xv.Criticality.AGNOSTIC, _ca_basic_constraints)
        .may_be_present(x509.KeyUsage, xv.Criticality.AGNOSTIC, _ca_key_usage)
        .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.NON_CRITICAL, None)
        .may_be_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, _eku_check(required, ca=True))
    )
    leaf = (
        xv.ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.AuthorityKeyIdentifier, xv.Criticality.NON_CRITICAL, None)
        .may_be_present(x509.ExtendedKeyUsage, xv.Criticality.AGNOSTIC, _eku_check(required, ca=False))
    )
    return ca, leaf


def trust_store(roots: Sequence[x509.Certificate]) -> xv.Store:
    """The verifier's trust anchors; raises InvalidIdentityError when ``roots`` is empty."""
    if not roots:
        raise _invalid("no trust bundle to verify the chain against")
    return xv.Store(list(roots))


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime | None = None,
    *,
    usage: Usage = "svid",
) -> tuple[x509.Certificate, ...]:
    """Verify ``chain`` (the leaf, then any certificates that may help build a path, in any order)
    up to one of ``roots`` at ``now`` (default: the current time); returns the path, leaf to root.

    Path building and validation are cryptography's RFC 5280 verifier (see
    :func:`_extension_policies` for what is adjusted to X509-SVIDs). The
    SPIFFE rules it does not know are
    :func:`~meshnode.identity.x509svid.spiffe_id_of` and
    :func:`~meshnode.identity.x509svid.check_leaf`. ``usage`` says which EKUs
    the chain must allow. Raises InvalidIdentityError (and nothing else)
    whose ``reason`` is the verifier's own account (the certificate it was
    processing, why), followed by facts that help find that link.
    """
    if not chain:
        raise _invalid("no certificate to verify")
    at = now or utcnow()
    ca_policy, leaf_policy = _extension_policies(usage)
    verifier = (
        xv.PolicyBuilder().store(trust_store(roots)).time(at)
        .extension_policies(ca_policy=ca_policy, ee_policy=leaf_policy)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(chain[0], list(chain[1:]))
    except xv.VerificationError as exc:  # its text names the certificate it was processing and why
        reason = str(exc)
    except (ValueError, x509.UnsupportedGeneralNameType) as exc:  # a path exists, but a name in it cannot be read
        reason = f"a certificate on the path cannot be read: {describe_error(exc)}"
    else:
        return tuple(verified.chain)
    reason = _failure_reason(reason, chain, roots, at)
    raise InvalidIdentityError(
        f"identity: the certificate chain (leaf serial {chain[0].serial_number:x}) does not verify against "
        f"the trust bundle at {at.isoformat(timespec='seconds')}: {reason}",
        reason=reason,
    )


def _failure_reason(said: str, chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                    at: dt.datetime) -> str:
    """What the verifier ``said``, with facts that help find the link it means (failure path only:
    none of this decides anything): certificates outside their validity at ``at``, a CA with URI name
    constraints, and the subjects presented and trusted."""
    notes = [said]
    stale = [c for c in (*chain, *roots) if not c.not_valid_before_utc <= at <= c.not_valid_after_utc]
    if stale:
        notes.append("outside its validity at " + at.isoformat(timespec="seconds") + ": " + ", ".join(
            f"certificate serial {c.serial_number:x} {_subject(c)} "
            f"({c.not_valid_before_utc.isoformat()} .. {c.not_valid_after_utc.isoformat()})"
            for c in stale[:3]
        ))
    if _has_uri_name_constraints([*chain[1:], *roots]):
        notes.append(
            "a CA here has URI name constraints, which this verifier does not implement, so every chain "
            "through it is refused (X509-SVID 4.2 allows that; issue SVIDs from a CA without them)"
        )
    return _one_line(f"{'; '.join(notes)} ({_presented(chain)}; bundle: {_names(roots)})")


def _has_uri_name_constraints(certs: Sequence[x509.Certificate]) -> bool:
    for cert in certs:
        try:
            nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
        except (x509.ExtensionNotFound, ValueError):
            continue
        subtrees = [*(nc.permitted_subtrees or ()), *(nc.excluded_subtrees or ())]
        if any(isinstance(name, x509.UniformResourceIdentifier) for name in subtrees):
            return True
    return False


def _presented(chain: Sequence[x509.Certificate]) -> str:
    """The certificates presented after the leaf, by subject: the links the verifier's reason is about."""
    return f"presented after the leaf: {_names(chain[1:])}" if len(chain) > 1 else "the leaf was presented alone"


def _names(certs: Sequence[x509.Certificate], most: int = 4) -> str:
    shown = ", ".join(_subject(cert) for cert in certs[:most])
    return shown + (f" and {len(certs) - most} more" if len(certs) > most else "")


def _subject(cert: x509.Certificate) -> str:
    """A certificate's subject, quoted and bounded; cryptography parses names lazily, so a hostile
    certificate's malformed name surfaces here as ValueError and is shown as such."""
    try:
        return repr(cert.subject.rfc4514_string()[:80])
    except ValueError:
        return "<a subject that cannot be parsed>"
