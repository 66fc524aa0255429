"""X509-SVID chain verification: cryptography's RFC 5280 verifier plus meshnode's SVID-profile checks.

Every certificate is made at test time (tests/support/pki.py). Each test
asserts what a user sees: the reason an SVID is refused (build_snapshot is
what the files source, the dev agent's output and the Workload API source
all go through; two tests go through a real files source and a real
Workload API server), or, for a federated caller re-verified against its
own trust domain's bundle, the status of a real mTLS call (see
test_federated_callers_are_reverified_over_mtls).
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshnode.authz import AcceptedTrust, Authorizer, Policy, allow
from meshnode.authz.identity import resolve_peer
from meshnode.bundle import BundleSet
from meshnode.devagent.ca import DevCA
from meshnode.errors import InvalidIdentityError
from meshnode.identity import StaticSource
from meshnode.identity.files import FileSource, SvidFiles
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509chain import verify_chain
from meshnode.identity.x509svid import build_snapshot
from meshnode.testing import short_tmpdir
from tests.support.authz import HOUR, SERVER_ID, ClientCert, serve
from tests.support.pki import CA, SPIRE_SUBJECT, Leaf, ago, from_now, key_usage
from tests.support.probe import SERVICE, Client, Probe, registration
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_response

A_ID = "spiffe://a.org/workload"
B_ID = "spiffe://b.org/workload"


@pytest.fixture(scope="module")
def a_root() -> CA:
    return CA.root("a.org")


@pytest.fixture(scope="module")
def b_root() -> CA:
    return CA.root("b.org")


def snapshot(chain: tuple[x509.Certificate, ...], leaf: Leaf, *roots: CA, now: dt.datetime | None = None
             ) -> IdentitySnapshot:
    """build_snapshot with each root as the bundle of its trust domain."""
    return build_snapshot(chain, leaf.key, {root.trust_domain: (root.cert,) for root in roots}, now=now)


def refusal(chain: tuple[x509.Certificate, ...], leaf: Leaf, *roots: CA) -> str:
    with pytest.raises(InvalidIdentityError) as info:
        snapshot(chain, leaf, *roots)
    return str(info.value)


# -- what the verifier refuses -------------------------------------------------------------------------


def test_a_path_length_constraint_is_enforced(a_root: CA) -> None:
    """The old greedy path builder ignored pathLenConstraint: a CA limited to signing leaves could
    mint a sub-CA whose SVIDs verified."""
    limited = a_root.intermediate("a.org", name="limited", path_length=0)
    below = limited.intermediate("a.org", name="below limited")
    leaf = below.leaf(A_ID)
    message = refusal(below.chain(leaf), leaf, a_root)
    assert f"the SVID chain of {A_ID} does not verify against the trust bundle of 'a.org'" in message
    assert "path length constraint violated" in message
    assert "presented after the leaf: 'CN=below limited,O=meshnode tests', 'CN=limited,O=meshnode tests'" in message
    within = limited.leaf(A_ID)  # the same CA may still sign leaves
    assert str(snapshot(limited.chain(within), within, a_root).spiffe_id) == A_ID


def test_a_ca_name_constrained_to_another_trust_domain_cannot_vouch_outside_it(a_root: CA, b_root: CA) -> None:
    constrained = a_root.intermediate("b.org", name="only b.org", permitted_uris=["b.org"])
    leaf = constrained.leaf(A_ID)
    message = refusal(constrained.chain(leaf), leaf, a_root, b_root)
    assert "unsupported name constraint" in message
    assert "a CA here has URI name constraints, which this verifier does not implement" in message


def test_uri_name_constraints_refuse_ids_inside_them_too(b_root: CA) -> None:
    """cryptography 50 does not implement URI name constraints, so it refuses every chain through a CA
    that has them, also for IDs the constraint permits. X509-SVID 4.2 allows exactly that (libraries
    without support reject such certificates); the reason says so."""
    constrained = b_root.intermediate("b.org", name="only b.org", permitted_uris=["b.org"])
    leaf = constrained.leaf(B_ID)
    message = refusal(constrained.chain(leaf), leaf, b_root)
    assert f"the SVID chain of {B_ID} does not verify against the trust bundle of 'b.org'" in message
    assert "unsupported name constraint" in message and "issue SVIDs from a CA without them" in message


def test_a_leaf_with_ca_true_is_refused(a_root: CA) -> None:
    leaf = a_root.leaf(A_ID, ca=True)
    assert "SVID leaf has CA=true; a leaf SVID must not be a CA" in refusal(a_root.chain(leaf), leaf, a_root)
    # verify_chain on its own (the dev CA and agent tests call it) refuses it too: the old one did not
    with pytest.raises(InvalidIdentityError, match=r"basicConstraints\.cA must not be asserted in an EE certificate"):
        verify_chain(a_root.chain(leaf), [a_root.cert])


def test_an_intermediate_whose_key_usage_lacks_key_cert_sign_is_refused(a_root: CA) -> None:
    """X509-SVID 4.3, RFC 5280 6.1.4 (n): a keyUsage on a CA must assert keyCertSign. The old code
    looked at cA only."""
    ca = a_root.intermediate("a.org", name="no cert signing", ku=key_usage(ca=True, key_cert_sign=False))
    leaf = ca.leaf(A_ID)
    message = refusal(ca.chain(leaf), leaf, a_root)
    assert "keyUsage of an issuer does not assert keyCertSign" in message
    assert "presented after the leaf: 'CN=no cert signing,O=meshnode tests'" in message


def test_an_issuer_must_say_ca_but_not_in_the_web_pkis_words(a_root: CA) -> None:
    """Path validation as RFC 5280 (and gRPC's TLS layer, and go-spiffe) does it: an issuer without
    basicConstraints is no CA; one whose basicConstraints is not critical, or that has no keyUsage at
    all, is (the web PKI's issuance rules would refuse both; common openssl CA configurations make them)."""
    not_a_ca = a_root.intermediate("a.org", name="no basic constraints", bc_critical=None)
    leaf = not_a_ca.leaf(A_ID)
    assert "2.5.29.19: missing required extension: CA certificate has no basicConstraints" in refusal(
        not_a_ca.chain(leaf), leaf, a_root
    )
    for ca in (a_root.intermediate("a.org", bc_critical=False), a_root.intermediate("a.org", omit_key_usage=True)):
        fine = ca.leaf(A_ID)
        assert verify_chain(ca.chain(fine), [a_root.cert]) == (fine.cert, ca.cert, a_root.cert)


def test_an_expired_intermediate_is_refused_and_named(a_root: CA) -> None:
    ca = a_root.intermediate("a.org", name="expired", not_before=ago(3 * HOUR), not_after=ago(HOUR))
    leaf = ca.leaf(A_ID)
    message = refusal(ca.chain(leaf), leaf, a_root)
    assert "candidates exhausted: cert is not valid at validation time; outside its validity at " in message
    assert f"certificate serial {ca.cert.serial_number:x} 'CN=expired,O=meshnode tests' (" in message


def test_a_not_yet_valid_leaf_is_refused_and_the_validation_time_is_explicit(a_root: CA) -> None:
    starts = from_now(HOUR)
    leaf = a_root.leaf(A_ID, not_before=starts, not_after=starts + HOUR)
    message = refusal(a_root.chain(leaf), leaf, a_root)
    assert "cert is not valid at validation time (encountered processing <Certificate(subject=<Name(O=test workload)>" \
        in message
    assert f"certificate serial {leaf.cert.serial_number:x}" in message
    later = starts + dt.timedelta(minutes=1)
    assert str(snapshot(a_root.chain(leaf), leaf, a_root, now=later).spiffe_id) == A_ID
    assert verify_chain(a_root.chain(leaf), [a_root.cert], later) == (leaf.cert, a_root.cert)


def test_a_cross_trust_domain_chain(a_root: CA, b_root: CA) -> None:
    """Trust comes from the bundle of the leaf's own trust domain, never from what an intermediate
    calls itself. An intermediate that a.org's root signed vouches for a.org IDs even when its URI SAN
    names b.org (X509-SVID 3.2: a signing certificate's ID SHOULD, not MUST, be in the trust domain of
    the leaves it signs; go-spiffe accepts it too): a.org's root chose to delegate to it. The same
    intermediate cannot vouch for a b.org ID: that chain is checked against b.org's bundle only."""
    named_b = a_root.intermediate("b.org", name="calls itself b.org")
    a_leaf = named_b.leaf(A_ID)
    assert str(snapshot(named_b.chain(a_leaf), a_leaf, a_root, b_root).spiffe_id) == A_ID
    b_leaf = named_b.leaf(B_ID)
    message = refusal(named_b.chain(b_leaf), b_leaf, a_root, b_root)
    assert f"the SVID chain of {B_ID} does not verify against the trust bundle of 'b.org'" in message
    assert "bundle: 'CN=b.org root,O=meshnode tests'" in message


# -- what the verifier accepts ---------------------------------------------------------------------------


def test_intermediates_in_any_order(a_root: CA) -> None:
    upper = a_root.intermediate("a.org", name="upper")
    lower = upper.intermediate("a.org", name="lower")
    leaf = lower.leaf(A_ID)
    reversed_chain = (leaf.cert, upper.cert, lower.cert)
    assert snapshot(reversed_chain, leaf, a_root).chain == reversed_chain  # served as given
    assert verify_chain(reversed_chain, [a_root.cert]) == (leaf.cert, lower.cert, upper.cert, a_root.cert)


def test_certificates_off_the_path_do_not_matter(a_root: CA) -> None:
    """Extra certificates are only candidates. The old code checked the validity of every certificate
    given, so an expired certificate that is not on the path refused a good SVID."""
    ca = a_root.intermediate("a.org")
    leaf = ca.leaf(A_ID)
    unrelated = CA.root("c.org").cert
    expired_unrelated = CA.root("c.org", not_before=ago(3 * HOUR), not_after=ago(HOUR)).cert
    for extra in (unrelated, expired_unrelated):
        chain = (*ca.chain(leaf), extra)
        assert str(snapshot(chain, leaf, a_root).spiffe_id) == A_ID
        assert verify_chain(chain, [a_root.cert]) == (leaf.cert, ca.cert, a_root.cert)


def test_the_root_given_in_the_chain(a_root: CA) -> None:
    ca = a_root.intermediate("a.org")
    leaf = ca.leaf(A_ID)
    assert str(snapshot((*ca.chain(leaf), a_root.cert), leaf, a_root).spiffe_id) == A_ID


def test_a_cross_signed_intermediate_whose_first_issuer_is_a_dead_end(a_root: CA) -> None:
    """The same intermediate (subject and key) signed by a retired root and by the current one, the
    retired one listed first: the verifier backtracks; the old greedy builder took the first issuer
    that verified, reached the retired root and refused."""
    retired = CA.root("a.org", name="a.org retired root")
    by_retired = retired.intermediate("a.org", name="cross-signed")
    by_current = a_root.intermediate("a.org", name="cross-signed", key=by_retired.key)
    leaf = by_current.leaf(A_ID)
    chain = (leaf.cert, by_retired.cert, by_current.cert)
    assert str(snapshot(chain, leaf, a_root).spiffe_id) == A_ID
    assert verify_chain(chain, [a_root.cert]) == (leaf.cert, by_current.cert, a_root.cert)


def test_a_leaf_without_a_subject_needs_a_critical_san(a_root: CA) -> None:
    """X509-SVID 3.1 (RFC 5280 4.1.2.6): the subject may be empty; then the URI SAN is critical."""
    leaf = a_root.leaf(A_ID, subject=x509.Name([]), san_critical=True)
    assert str(snapshot(a_root.chain(leaf), leaf, a_root).spiffe_id) == A_ID
    bad = a_root.leaf(A_ID, subject=x509.Name([]), san_critical=False)
    assert "SVID leaf has an empty subject and a non-critical SAN extension" in refusal(a_root.chain(bad), bad, a_root)


@pytest.mark.parametrize("via_intermediate", [False, True], ids=["root-signed", "intermediate-signed"])
def test_spire_shaped_svids_verify(a_root: CA, via_intermediate: bool) -> None:
    """URI SAN only (no DNS SAN: grpc's hostname check is not the verifier's business), SPIRE's subject
    and key usages, serverAuth+clientAuth."""
    ca = a_root.intermediate("a.org") if via_intermediate else a_root
    leaf = ca.leaf(A_ID, subject=SPIRE_SUBJECT)  # pki leaves carry a DNS SAN only when asked to
    snap = snapshot(ca.chain(leaf), leaf, a_root)
    assert (str(snap.spiffe_id), snap.chain) == (A_ID, ca.chain(leaf))


def test_extended_key_usage_follows_the_x509_svid_profile(a_root: CA) -> None:
    """X509-SVID 4.4: when a leaf lists EKUs it lists serverAuth and clientAuth (a node serves and calls
    with its SVID); the extension may be critical. A caller needs clientAuth only."""
    for fine in (a_root.leaf(A_ID, eku=None), a_root.leaf(A_ID, eku_critical=True)):
        assert str(snapshot(a_root.chain(fine), fine, a_root).spiffe_id) == A_ID
    client_only = a_root.leaf(A_ID, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert "extendedKeyUsage lacks serverAuth" in refusal(a_root.chain(client_only), client_only, a_root)
    assert verify_chain(a_root.chain(client_only), [a_root.cert], usage="client")[0] == client_only.cert
    server_only = a_root.leaf(A_ID, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(InvalidIdentityError, match="extendedKeyUsage lacks clientAuth"):
        verify_chain(a_root.chain(server_only), [a_root.cert], usage="client")


def unparseable_subject(ca: CA) -> x509.Certificate:
    """``ca``'s certificate with invalid UTF-8 in its subject (its CN must start with AAAAAAAA): it loads,
    and cryptography raises ValueError only when the subject is read."""
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    return x509.load_der_x509_certificate(der.replace(b"AAAAAAAA", b"\xff\xfe" * 4))  # issuer and subject


def test_an_unparseable_extra_certificate_is_a_reason_never_an_exception(a_root: CA) -> None:
    """The old path builder read every candidate's subject and let cryptography's ValueError out of
    resolve_peer. (gRPC's TLS layer refuses such a client chain first, so this is defence in depth.)"""
    junk = unparseable_subject(CA.root("a.org", name="AAAAAAAA junk"))
    ca = a_root.intermediate("a.org")
    good = ca.leaf(A_ID)
    assert verify_chain((good.cert, junk, ca.cert), [a_root.cert]) == (good.cert, ca.cert, a_root.cert)
    stranger = CA.root("a.org", name="stranger").leaf(A_ID)
    auth = {"x509_pem_cert": [certs_pem([stranger.cert])], "x509_pem_cert_chain": [certs_pem([junk, ca.cert])]}
    peer = resolve_peer(auth, accepted=frozenset({"a.org", "b.org"}), bundles=BundleSet({"a.org": (a_root.cert,)}))
    assert peer.spiffe_id is None
    assert f"{A_ID}: chain does not verify against the bundle of 'a.org'" in peer.problem
    assert "presented after the leaf: <a subject that cannot be parsed>, 'CN=a.org intermediate" in peer.problem


# -- through the sources ----------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_the_files_source_refuses_a_chain_through_a_ca_outside_its_name_constraints(
    tmp_path: Path, a_root: CA
) -> None:
    constrained = a_root.intermediate("b.org", name="only b.org", permitted_uris=["b.org"])
    leaf = constrained.leaf(A_ID)
    files = SvidFiles(tmp_path / "svid.pem", tmp_path / "key.pem", tmp_path / "bundle.pem")
    files.cert.write_bytes(certs_pem(constrained.chain(leaf)))
    files.key.write_bytes(_pem_key(leaf.key))
    files.bundle.write_bytes(certs_pem([a_root.cert]))
    with pytest.raises(InvalidIdentityError) as info:
        FileSource(files)
    assert f"the SVID chain of {A_ID} does not verify against the trust bundle of 'a.org'" in str(info.value)
    assert "unsupported name constraint" in str(info.value)


@pytest.fixture
def sockets() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_workload_api_source_rejects_a_push_that_breaks_a_path_length_and_keeps_its_svid(
    a_root: CA, sockets: Path
) -> None:
    """py-spiffe accepts the chain (each CA has cA and keyCertSign); meshnode's verifier refuses it."""
    limited = a_root.intermediate("a.org", name="limited", path_length=0)
    below = limited.intermediate("a.org", name="below limited")
    good, bad, renewed = (ca.leaf(A_ID, subject=SPIRE_SUBJECT) for ca in (limited, below, limited))
    first_push = x509_response(A_ID, limited.chain(good), good.key, [a_root.cert])
    with ScriptedWorkloadApi(sockets / "api.sock", first_push) as api:
        errors: list[str] = []
        with WorkloadApiSource(api.address, timeout=10, on_error=errors.append) as source:
            first = source.current()
            assert (str(first.spiffe_id), first.chain) == (A_ID, limited.chain(good))
            published = threading.Event()
            source.subscribe(lambda snap: published.set())
            api.push(x509_response(A_ID, below.chain(bad), bad.key, [a_root.cert]))
            api.push(x509_response(A_ID, limited.chain(renewed), renewed.key, [a_root.cert]))  # after the bad one
            assert published.wait(30)
            assert (source.current().generation, source.current().leaf) == (first.generation + 1, renewed.cert)
    assert len(errors) == 1 and "path length constraint violated" in errors[0], errors


# -- federated callers, re-verified against their own trust domain's bundle -------------------------------


PARTNER = "partner.org"


def _case_chains(partner: CA) -> dict[str, tuple[ClientCert, grpc.StatusCode, str]]:
    """name -> (client certificate, expected status, text expected in the details or the peer ID)."""
    pid = f"spiffe://{PARTNER}/billing"
    upper = partner.intermediate(PARTNER, name="partner upper")
    lower = upper.intermediate(PARTNER, name="partner lower")
    spire = lower.leaf(pid, subject=SPIRE_SUBJECT)
    no_ku = partner.intermediate(PARTNER, name="partner no key usage", omit_key_usage=True)
    no_ku_leaf = no_ku.leaf(pid)
    no_subject_lax = partner.leaf(pid, subject=x509.Name([]), san_critical=False)
    constrained = partner.intermediate(PARTNER, name="partner constrained", permitted_uris=[PARTNER])
    constrained_leaf = constrained.leaf(pid)
    named_other = partner.intermediate("example.org", name="partner CA named example.org")
    claims_ours = named_other.leaf("spiffe://example.org/node/alpha")
    partner_via_named = named_other.leaf(pid)
    no_subject = partner.leaf(pid, subject=x509.Name([]), san_critical=True)

    def cc(leaf: Leaf, chain: tuple[x509.Certificate, ...]) -> ClientCert:
        return ClientCert(leaf.key, chain)

    unauth = grpc.StatusCode.UNAUTHENTICATED
    return {
        "spire-shaped, intermediates reversed": (
            cc(spire, (spire.cert, upper.cert, lower.cert)), grpc.StatusCode.OK, pid),
        "no subject, critical URI SAN": (cc(no_subject, (no_subject.cert,)), grpc.StatusCode.OK, pid),
        "intermediate named after another trust domain": (
            cc(partner_via_named, named_other.chain(partner_via_named)), grpc.StatusCode.OK, pid),
        "intermediate without key usage": (cc(no_ku_leaf, no_ku.chain(no_ku_leaf)), grpc.StatusCode.OK, pid),
        "no subject, non-critical SAN": (
            cc(no_subject_lax, (no_subject_lax.cert,)), unauth,
            "SVID leaf has an empty subject and a non-critical SAN extension"),
        "URI name constraints": (
            cc(constrained_leaf, constrained.chain(constrained_leaf)), unauth,
            f"{pid}: chain does not verify against the bundle of 'partner.org': validation failed: candidates "
            "exhausted: unsupported name constraint; a CA here has URI name constraints"),
        "partner chain claiming an example.org ID": (
            cc(claims_ours, named_other.chain(claims_ours)), unauth,
            "spiffe://example.org/node/alpha: chain does not verify against the bundle of 'example.org'"),
    }


async def test_federated_callers_are_reverified_over_mtls() -> None:
    """A node accepting example.org and partner.org: gRPC's TLS layer verifies against the union of
    both bundles, then meshnode re-verifies each caller against its own trust domain's bundle. What
    the TLS layer lets through but the verifier refuses is UNAUTHENTICATED with the verifier's reason."""
    example_org, partner = DevCA("example.org"), CA.root(PARTNER)
    server = example_org.issue(SERVER_ID, HOUR)
    bundles = {"example.org": example_org.bundle, PARTNER: (partner.cert,)}
    trust = AcceptedTrust(StaticSource(build_snapshot(server.chain, server.private_key, bundles)), frozenset(bundles))
    policy = Policy((allow([f"spiffe://{PARTNER}/billing", "spiffe://example.org/node/alpha"], service=SERVICE),))
    authorizer = Authorizer(policy, trust=trust)
    cases = _case_chains(partner)
    seen = {}
    async with serve(example_org, registration(authorizer, Probe(), "wrap"), extra_roots=[partner.cert]) as s:
        for name, (cert, _, _) in cases.items():
            async with Client(s, cert, certs_pem(example_org.bundle)) as client:
                seen[name] = await client.call("AsyncUnary")
    for name, (_, code, text) in cases.items():
        got_code, details, answers = seen[name]
        assert got_code is code, (name, details)
        if code is grpc.StatusCode.OK:
            assert answers == [text.encode()], name
        else:
            assert details.startswith("authz: no usable SPIFFE identity: ") and text in details, (name, details)
