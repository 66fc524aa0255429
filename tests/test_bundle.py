"""Bundles and bundle sets: one bundle per trust domain, validated, immutable; the BundleSource seam."""

from __future__ import annotations

import pytest

from meshnode.bundle import Bundle, BundleSet, BundleSource
from meshnode.devagent.ca import DevCA
from meshnode.errors import InvalidIdentityError, InvalidSpiffeIdError
from meshnode.testing import issue_snapshot


def test_a_bundle_set_answers_per_trust_domain_and_reads_as_a_mapping_of_roots() -> None:
    ours, theirs = DevCA("example.org"), DevCA("partner.org")
    bundles = BundleSet([Bundle("example.org", ours.bundle), Bundle("partner.org", theirs.bundle)])  # type: ignore[arg-type]
    found = bundles.bundle_for("partner.org")
    assert found is not None and found.authorities == theirs.bundle and found.trust_domain == "partner.org"
    assert bundles.bundle_for("other.org") is None
    assert dict(bundles) == {"example.org": ours.bundle, "partner.org": theirs.bundle}
    assert bundles.trust_domains == {"example.org", "partner.org"}
    assert bundles.without("partner.org").trust_domains == {"example.org"}
    replaced = bundles.with_bundle(Bundle("partner.org", ours.bundle))  # type: ignore[arg-type]
    assert replaced["partner.org"] == ours.bundle and bundles["partner.org"] == theirs.bundle  # immutable
    assert found.pem().count(b"BEGIN CERTIFICATE") == len(theirs.bundle)
    assert found.earliest_expiry() == min(c.not_valid_after_utc for c in theirs.bundle)


def test_bundles_refuse_what_is_not_a_bundle() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        Bundle("Not A Domain", ())  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentityError, match="not a certificate"):
        Bundle("example.org", (b"-----BEGIN CERTIFICATE-----",))  # type: ignore[arg-type]
    ca = DevCA("example.org")
    with pytest.raises(InvalidIdentityError, match=r"two bundles for the trust domain 'example\.org'"):
        BundleSet([Bundle("example.org", ca.bundle), Bundle("example.org", ca.bundle)])  # type: ignore[arg-type]


def test_a_snapshot_is_a_bundle_source_and_holds_a_bundle_set() -> None:
    snapshot = issue_snapshot(DevCA("example.org"), "spiffe://example.org/a", federated=[DevCA("partner.org")])
    source: BundleSource = snapshot
    assert isinstance(snapshot.bundles, BundleSet)
    partner = source.bundle_for("partner.org")
    assert partner is not None and partner.authorities == snapshot.bundles["partner.org"]
