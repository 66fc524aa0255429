"""The dev CA: X509-SVID rules, DNS SANs, persistence, overlap-safe rotation, JWT-SVIDs."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from meshnode.devagent.ca import DevCA
from meshnode.errors import ConfigError, InvalidIdentityError
from meshnode.identity.snapshot import utcnow
from meshnode.identity.x509chain import verify_chain
from meshnode.spiffeid import dns_name_for

TTL = dt.timedelta(minutes=5)
ALPHA = "spiffe://example.org/node/alpha"


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_oid(oid)


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_svid_and_ca_follow_the_x509_svid_spec() -> None:
    ca = DevCA("example.org")
    leaf = ca.issue(ALPHA, TTL).chain[0]

    assert _sans(leaf).get_values_for_type(x509.UniformResourceIdentifier) == [ALPHA]
    bc = _ext(leaf, ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical and bc.value.ca is False  # type: ignore[attr-defined]
    ku = _ext(leaf, ExtensionOID.KEY_USAGE).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign  # type: ignore[attr-defined]
    assert leaf.not_valid_after_utc <= utcnow() + TTL

    root = ca.ca_certificate
    assert _ext(root, ExtensionOID.BASIC_CONSTRAINTS).value.ca is True  # type: ignore[attr-defined]
    assert _ext(root, ExtensionOID.KEY_USAGE).value.key_cert_sign  # type: ignore[attr-defined]
    assert _sans(root).get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    verify_chain([leaf], ca.bundle)


def test_dns_sans_mapped_extra_and_none() -> None:
    ca = DevCA("example.org")
    mapped = ca.issue(ALPHA, TTL, dns_names=("Alpha.Local", "alpha.local")).chain[0]
    assert _sans(mapped).get_values_for_type(x509.DNSName) == [dns_name_for(ALPHA), "alpha.local"]
    bare = ca.issue(ALPHA, TTL, map_dns=False).chain[0]
    assert _sans(bare).get_values_for_type(x509.DNSName) == []
    assert _sans(bare).get_values_for_type(x509.UniformResourceIdentifier) == [ALPHA]


def test_refuses_ids_it_must_not_sign() -> None:
    ca = DevCA("example.org")
    with pytest.raises(ConfigError, match=r"outside the trust domain 'example\.org'"):
        ca.issue("spiffe://other.org/node/a", TTL)
    with pytest.raises(ConfigError, match="has no path"):
        ca.issue("spiffe://example.org", TTL)
    with pytest.raises(ConfigError, match="SPIFFE IDs go in the URI SAN"):
        ca.issue(ALPHA, TTL, dns_names=("spiffe://example.org/node/beta",))


def test_state_dir_keeps_the_ca_with_private_key_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = DevCA("example.org", state_dir=state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("ca.key.pem", "jwt.key.pem"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    again = DevCA("example.org", state_dir=state)
    assert again.ca_certificate == first.ca_certificate
    assert again.jwt_key_id == first.jwt_key_id
    with pytest.raises(ConfigError, match="belongs to another trust domain"):
        DevCA("other.org", state_dir=state)

    first.prepare_rotation()
    first.activate_next()
    assert DevCA("example.org", state_dir=state).ca_certificate == first.ca_certificate


def test_rotation_overlaps_and_retires_one_ca_at_a_time() -> None:
    ca = DevCA("example.org")
    ca1 = ca.ca_certificate
    ca2 = ca.prepare_rotation()
    assert ca.bundle == (ca1, ca2)
    assert ca.issue(ALPHA, TTL).chain[0].issuer == ca1.subject  # the next CA signs nothing yet

    ca.activate_next()
    leaf = ca.issue(ALPHA, TTL).chain[0]
    assert leaf.issuer == ca2.subject and set(ca.bundle) == {ca1, ca2}
    verify_chain([leaf], ca.bundle)

    ca.prepare_rotation()
    ca.activate_next()  # a second rotation before the first retired: both old CAs stay
    assert len(ca.bundle) == 3
    assert ca.retire(ca1) is True
    assert ca1 not in ca.bundle and ca2 in ca.bundle
    assert ca.retire(ca.ca_certificate) is False  # never the signer
    ca.retire_previous()
    assert ca.bundle == (ca.ca_certificate,)
    with pytest.raises(InvalidIdentityError, match="before prepare_rotation"):
        ca.activate_next()


def test_jwt_svids_verify_with_the_jwks() -> None:
    ca = DevCA("example.org")
    token = ca.sign_jwt(ALPHA, ["svc-b", "svc-c"], TTL)
    keys = json.loads(ca.jwks())["keys"]
    assert [k["kid"] for k in keys] == [ca.jwt_key_id] and keys[0]["use"] == "jwt-svid"
    assert jwt.get_unverified_header(token)["kid"] == ca.jwt_key_id
    key = jwt.PyJWK(keys[0]).key
    claims = jwt.decode(token, key, algorithms=["ES256"], audience="svc-c")
    assert claims["sub"] == ALPHA and claims["aud"] == ["svc-b", "svc-c"]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["ES256"], audience="svc-x")
