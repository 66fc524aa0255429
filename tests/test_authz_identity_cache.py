"""The identity cache is keyed on the certificate, never on its SAN strings.

gRPC's ``peer_identities()`` is a flat list of SAN strings without their
types: a real SVID (URI SAN ``spiffe://example.org/node/alpha``), a
certificate whose CN is that string, one with it as a DNS SAN, a CA leaf
with that URI SAN... all give the same list. A cache keyed on that list let
a non-SVID pass as the SVID that called before it (bypass), and a non-SVID
that called first locked the real SVID out (lockout). Each shape is tried in
both orders, with one and with several accepted trust domains, over real
mTLS; then a property test drives one cached authorizer with random
certificates and compares every verdict with a fresh, uncached one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.authz import AcceptedTrust, Authorizer, Policy, allow
from meshnode.authz.authorizer import peer_key
from meshnode.devagent.ca import DevCA
from meshnode.identity import StaticSource
from meshnode.identity.snapshot import certs_pem
from meshnode.identity.x509svid import build_snapshot
from tests.support.authz import HOUR, SERVER_ID, ClientCert, RawCA, serve
from tests.support.probe import SERVICE, Client, Probe, registration

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"

# Certificates that chain to a trusted CA but are not X509-SVIDs for ALPHA.
NON_SVIDS: dict[str, Callable[[RawCA], ClientCert]] = {
    "cn-only": lambda ca: ca.issue(cn=ALPHA),
    "dns-san-equals-id": lambda ca: ca.issue(dns=[ALPHA], cn="x"),
    "ca-leaf": lambda ca: ca.issue([ALPHA], ca=True),
    "key-cert-sign-leaf": lambda ca: ca.issue([ALPHA], key_cert_sign=True),
    "two-uri-sans": lambda ca: ca.issue([ALPHA, BETA]),
    "same-uri-twice": lambda ca: ca.issue([ALPHA, ALPHA]),
    "uri-and-dns-spelled-the-same": lambda ca: ca.issue([ALPHA], dns=[ALPHA]),
    "trust-domain-id-without-path": lambda ca: ca.issue(["spiffe://example.org"]),
}

POLICY = Policy((allow(ALPHA, service=SERVICE, name="alpha"),), name="cache")


def authorizer_for(ca: DevCA, raw: RawCA, trust_domains: int) -> Authorizer:
    """One accepted trust domain, or two (then chains are re-verified per trust domain)."""
    if trust_domains == 1:
        return Authorizer(POLICY)
    partner = RawCA("partner.org CA")
    svid = ca.issue(SERVER_ID, HOUR)
    bundles = {"example.org": (*ca.bundle, raw.cert), "partner.org": (partner.cert,)}
    snapshot = build_snapshot(svid.chain, svid.private_key, bundles)
    return Authorizer(POLICY, trust=AcceptedTrust(StaticSource(snapshot), frozenset(bundles)))


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA("example.org")


@pytest.mark.parametrize("trust_domains", [1, 2])
@pytest.mark.parametrize("order", ["svid-first", "non-svid-first"])
@pytest.mark.parametrize("svid_dns", [False, True], ids=["uri-only-svid", "svid-with-dns-san"])
@pytest.mark.parametrize("shape", sorted(NON_SVIDS))
async def test_a_non_svid_never_shares_a_decision_with_the_svid(
    ca: DevCA, shape: str, svid_dns: bool, order: str, trust_domains: int
) -> None:
    raw = RawCA("example.org second CA")  # a CA of the same trust domain that signs anything
    real = ClientCert.of(ca.issue(ALPHA, HOUR, map_dns=svid_dns))  # SPIRE's default: URI SAN only
    odd = NON_SVIDS[shape](raw)
    authorizer = authorizer_for(ca, raw, trust_domains)
    probe = Probe()
    expected = {id(real): grpc.StatusCode.OK, id(odd): grpc.StatusCode.UNAUTHENTICATED}
    sequence = [real, odd, real] if order == "svid-first" else [odd, real, odd]
    async with serve(ca, registration(authorizer, probe, "wrap"), extra_roots=[raw.cert]) as served:
        for cert in sequence:
            async with Client(served, cert, certs_pem(ca.bundle)) as client:
                for method in ("AsyncUnary", "SyncUnary", "AsyncServerStream"):
                    code, details, answers = await client.call(method)
                    assert code is expected[id(cert)], (shape, order, method, details)
                    if cert is real:
                        assert answers[0] == ALPHA.encode()
                    else:
                        assert details.startswith("authz: no usable SPIFFE identity: ")
    assert len(probe.entered) == 3 * sum(cert is real for cert in sequence)  # only the SVID got in


# -- property: a cached authorizer decides exactly as an uncached one ---------------------------------------


class _Context:
    """The two things Authorizer.check reads from a servicer context (a plain value, not a mock)."""

    def __init__(self, pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [pem], "transport_security_type": [b"ssl"]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def invocation_metadata(self) -> tuple[()]:
        return ()


_RAW = RawCA("example.org property CA")
_IDS = [ALPHA, BETA, "spiffe://example.org/x", "spiffe://other.org/node/alpha"]
_SHAPE = st.fixed_dictionaries({
    "uris": st.lists(st.sampled_from(_IDS), max_size=2),
    "dns": st.lists(st.sampled_from([*_IDS, "alpha.example.org"]), max_size=2),
    "cn": st.sampled_from([*_IDS, "client"]),
    "ca": st.booleans(),
    "key_cert_sign": st.booleans(),
})


def _pem(shape: dict[str, Any]) -> bytes:
    cert = _RAW.issue(shape["uris"], shape["dns"], cn=shape["cn"], ca=shape["ca"],
                      key_cert_sign=shape["key_cert_sign"])
    return cert.chain[0].public_bytes(serialization.Encoding.PEM)


def _decide(authorizer: Authorizer, pem: bytes) -> tuple[Any, str]:
    verdict = authorizer.check(_Context(pem), f"/{SERVICE}/AsyncUnary")
    return verdict.code, str(verdict.peer)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SHAPE, min_size=2, max_size=6))
def test_cached_verdicts_equal_fresh_verdicts_for_any_certificates(shapes: list[dict[str, Any]]) -> None:
    policy = Policy((allow(_IDS, name="everyone-listed"),))
    cached = Authorizer(policy)
    pems = [_pem(shape) for shape in shapes]
    keys = [peer_key({"x509_pem_cert": [pem]}) for pem in pems]
    assert len(set(keys)) == len(pems)  # distinct certificates never share an entry
    for pem in pems + pems:  # every certificate twice: the second round is served from the cache
        assert _decide(cached, pem) == _decide(Authorizer(policy), pem)


@pytest.mark.parametrize("order", ["svid-first", "forgery-first"])
def test_certificates_that_share_the_cache_window_never_share_a_decision(order: str) -> None:
    """The cache keys on 64 bytes of the certificate (cheap to hash) and counts a hit only when the whole
    certificate matches: a certificate made to end like the SVID's (here: the SVID's PEM with one byte
    changed before the window, so it no longer parses) is decided on its own, in either order."""
    real = _RAW.issue([ALPHA]).chain[0].public_bytes(serialization.Encoding.PEM)
    forged = real[:40] + (b"A" if real[40:41] != b"A" else b"B") + real[41:]
    assert forged[-96:-32] == real[-96:-32] and forged != real
    authorizer = Authorizer(Policy((allow(ALPHA, name="alpha"),)))
    expected = {real: (None, ALPHA), forged: (grpc.StatusCode.UNAUTHENTICATED, "None")}
    sequence = [real, forged, real, forged] if order == "svid-first" else [forged, real, forged, real]
    for pem in sequence:
        assert _decide(authorizer, pem) == expected[pem], order
