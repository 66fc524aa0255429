"""Federated bundle files (SPIFFE bundle JSON and PEM), the polled directory, and FederatedSource.

Real files in a real directory, certificates from test CAs; no mocks. The handshakes that these
bundles let in or keep out are in test_federation_live.py (real processes, real TLS).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshnode.devagent.ca import DevCA
from meshnode.errors import InvalidBundleError
from meshnode.identity.bundle_dir import BundleDir
from meshnode.identity.bundle_file import parse_pem_bundle, parse_spiffe_bundle
from meshnode.identity.federation import FederatedSource
from meshnode.identity.snapshot import certs_pem
from meshnode.identity.source import StaticSource
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.testing import issue_snapshot, short_tmpdir
from tests.support.badcerts import RawCA
from tests.support.federation import atomic_write, jwt_key, spiffe_bundle, x509_key
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_response

OWN, PARTNER = "example.org", "partner.org"
ALPHA = "spiffe://example.org/node/alpha"


@pytest.fixture(scope="module")
def partner() -> DevCA:
    return DevCA(PARTNER)


def refused(data: bytes, td: str = PARTNER, *, pem: bool = False) -> str:
    with pytest.raises(InvalidBundleError) as info:
        (parse_pem_bundle if pem else parse_spiffe_bundle)(data, td)
    assert info.value.trust_domain == td
    return info.value.reason


# -- one SPIFFE bundle document ---------------------------------------------------------------


def test_a_spire_bundle_gives_its_x509_cas_and_skips_its_jwt_keys(partner: DevCA) -> None:
    bundle = parse_spiffe_bundle(spiffe_bundle(partner.bundle, sequence=7, refresh_hint=300), PARTNER)
    assert bundle.authorities == partner.bundle
    assert (bundle.sequence, bundle.refresh_hint, bundle.ignored) == (7, 300, ())


def test_spec_rules_unknown_uses_and_types_are_ignored_extra_x5c_values_too(partner: DevCA) -> None:
    """SPIFFE Trust Domain and Bundle 4.2, X509-SVID 6.2: ignore such keys; the first x5c value is the CA."""
    [key] = [x509_key(c) for c in partner.bundle]
    other_ca = DevCA(OWN).ca_certificate
    extra = [
        {**key, "use": "X509-SVID"},  # uses are case-sensitive: an unknown use
        {**key, "kty": "FUTURE"},  # an unknown key type
        {"kty": "EC", "use": "x509-svid"},  # no x5c
        {**key, "x5c": [key["x5c"][0], base64.b64encode(other_ca.public_bytes(serialization.Encoding.DER)).decode()]},
        {"kty": "EC", "use": "wit-svid", "kid": "w"},  # another SVID type
    ]
    doc = json.dumps({"keys": [key, *extra], "unknown_member": {"is": "allowed"}}).encode()
    bundle = parse_spiffe_bundle(doc, PARTNER)
    assert bundle.authorities == partner.bundle  # the second x5c value (a CA of example.org) is not taken
    assert bundle.sequence is None and bundle.refresh_hint is None
    assert bundle.ignored == (
        'key 1 has "use": "X509-SVID", not "x509-svid" (uses are case-sensitive)',
        "key 2 has an unknown key type (kty \"FUTURE\")",
        'key 3 ("use": "x509-svid") has no "x5c" certificate',
        'key 5 has "use": "wit-svid", not "x509-svid" (uses are case-sensitive)',
    )


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong use", 'holds no X.509 CA (a key with "use": "x509-svid" and an "x5c" certificate): key 0 is a '
                  'JWT-SVID key ("use": "jwt-svid"); key 1 has "use": "sig", not "x509-svid" '
                  "(uses are case-sensitive)"),
    ("no x5c", 'holds no X.509 CA (a key with "use": "x509-svid" and an "x5c" certificate): key 0 ("use": '
               '"x509-svid") has no "x5c" certificate'),
    ("other trust domain", "is a CA of trust domain 'example.org' (URI SAN \"spiffe://example.org\"), not of "
                           "'partner.org'"),
    ("malformed JSON", "is not JSON: Expecting ',' delimiter: line 1 column 13 (char 12)"),
    ("truncated", "is not JSON: Expecting value: line 1 column 10 (char 9)"),
    ("no keys", "'keys' is missing (a SPIFFE bundle is a JWK Set)"),
    ("empty keys", "holds no X.509 CA (a key with \"use\": \"x509-svid\" and an \"x5c\" certificate): 'keys' is empty"),
    ("keys not a list", "'keys' is an object, not a list (a SPIFFE bundle is a JWK Set)"),
    ("a list", "is a JSON list, not an object (a SPIFFE bundle is a JWK Set)"),
    ("key not an object", "key 0 is a string, not a JSON object"),
    ("NaN", "is not JSON: NaN is not JSON"),
    ("repeated member", "is not JSON: the member \"keys\" appears twice in one object"),
    ("deep nesting", "is not JSON: nested too deeply"),
    ("not UTF-8", "is not UTF-8 text (a SPIFFE bundle is JSON)"),
    ("x5c not base64", "key 0: x5c[0] is not base64"),
    ("x5c not a certificate", "key 0: x5c[0] is not a DER certificate"),
    ("x5c a string", "key 0: 'x5c' is not a list of base64 strings"),
    ("kty mismatch", "key 0: kty \"RSA\" does not match its certificate's EC key"),
    ("negative sequence", "'spiffe_sequence' must be a non-negative integer, not -1"),
    ("boolean refresh hint", "'spiffe_refresh_hint' must be a non-negative integer, not True"),
])
def test_bad_documents_are_refused_with_the_reason(partner: DevCA, case: str, expected: str) -> None:
    [key] = [x509_key(c) for c in partner.bundle]
    docs: dict[str, object] = {
        "wrong use": {"keys": [jwt_key(), {**key, "use": "sig"}]},
        "no x5c": {"keys": [{k: v for k, v in key.items() if k != "x5c"}]},
        "other trust domain": {"keys": [x509_key(DevCA(OWN).ca_certificate)]},
        "no keys": {"spiffe_sequence": 1},
        "empty keys": {"keys": []},
        "keys not a list": {"keys": {"0": key}},
        "a list": [key],
        "key not an object": {"keys": ["x"]},
        "x5c not base64": {"keys": [{**key, "x5c": ["not base64!"]}]},
        "x5c not a certificate": {"keys": [{**key, "x5c": [base64.b64encode(b"junk").decode()]}]},
        "x5c a string": {"keys": [{**key, "x5c": key["x5c"][0]}]},
        "kty mismatch": {"keys": [{**key, "kty": "RSA"}]},
        "negative sequence": {"keys": [key], "spiffe_sequence": -1},
        "boolean refresh hint": {"keys": [key], "spiffe_refresh_hint": True},
    }
    raw = {
        "malformed JSON": b'{"keys": [] "x": 1}',
        "truncated": b'{"keys": ',
        "NaN": b'{"keys": [], "spiffe_sequence": NaN}',
        "repeated member": b'{"keys": [], "keys": []}',
        "deep nesting": b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "not UTF-8": b'{"keys": "\xff"}',
    }
    data = raw[case] if case in raw else json.dumps(docs[case]).encode()
    reason = refused(data)
    assert reason == expected or (reason.startswith("certificate 0 (serial ") and reason.endswith(expected))


def test_a_pem_file_gets_the_same_ca_checks(partner: DevCA) -> None:
    assert parse_pem_bundle(certs_pem(partner.bundle), PARTNER).authorities == partner.bundle
    assert refused(b"", pem=True) == "is empty"
    assert refused(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", pem=True).startswith(
        "not a PEM certificate list")
    assert "is a CA of trust domain 'example.org'" in refused(certs_pem(DevCA(OWN).bundle), pem=True)
    leaf = issue_snapshot(partner, "spiffe://partner.org/app").leaf
    assert refused(certs_pem([leaf]), pem=True).endswith("is not a CA (no basicConstraints CA=true)")
    broken = RawCA(PARTNER, malformed_san=True).certificate
    assert "has malformed extensions: ValueError" in refused(certs_pem([broken]), pem=True)


# -- the directory ----------------------------------------------------------------------------


@pytest.fixture
def fed() -> Iterator[Path]:
    d = short_tmpdir("mn-fed-")
    yield d
    shutil.rmtree(d)


def scan_twice(directory: BundleDir) -> bool:
    """Two scans, as two polls of the source's thread: a problem is reported on the second."""
    first = directory.scan(OWN)
    return directory.scan(OWN) or first


def test_json_and_pem_files_and_nothing_else(fed: Path, partner: DevCA) -> None:
    third = DevCA("third.org")
    atomic_write(fed / "partner.org.json", spiffe_bundle(partner.bundle))
    atomic_write(fed / "third.org.pem", certs_pem(third.bundle))
    (fed / ".partner.org.json.tmp").write_bytes(b"half a wri")  # a writer's temporary file
    (fed / "README.md").write_text("not a bundle")
    (fed / "other.org.json.bak").write_text("not a bundle either")
    (fed / "sub.org.json").mkdir()
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    assert directory.scan(OWN, at_once=True)
    assert dict(directory.bundles) == {PARTNER: partner.bundle, "third.org": third.bundle}
    assert errors == [] and not directory.scan(OWN)


def test_a_configmap_volume_is_read_and_its_updates_followed(fed: Path, partner: DevCA) -> None:
    """Kubernetes' layout: NAME -> ..data/NAME, ..data -> ..<timestamp>/; an update swaps ..data."""
    def version(name: str, ca: DevCA) -> None:
        (fed / name).mkdir()
        (fed / name / "partner.org.json").write_bytes(spiffe_bundle(ca.bundle))
        (fed / "..data_tmp").symlink_to(name)
        (fed / "..data_tmp").replace(fed / "..data")

    version("..2026_01", partner)
    (fed / "partner.org.json").symlink_to("..data/partner.org.json")
    directory = BundleDir(fed)
    assert directory.scan(OWN, at_once=True) and directory.bundles[PARTNER] == partner.bundle
    rotated = DevCA(PARTNER)
    version("..2026_02", rotated)
    assert directory.scan(OWN) and directory.bundles[PARTNER] == rotated.bundle


def test_a_removed_file_takes_its_trust_domain_away_after_two_scans(fed: Path, partner: DevCA) -> None:
    atomic_write(fed / "partner.org.json", spiffe_bundle(partner.bundle))
    directory = BundleDir(fed)
    assert directory.scan(OWN, at_once=True)
    (fed / "partner.org.json").unlink()
    assert not directory.scan(OWN) and PARTNER in directory.bundles  # a writer that deletes, then writes
    assert directory.scan(OWN) and PARTNER not in directory.bundles


BAD = {
    "wrong use": lambda key: json.dumps({"keys": [{**key, "use": "jwt-svid"}]}).encode(),
    "no x5c": lambda key: json.dumps({"keys": [{k: v for k, v in key.items() if k != "x5c"}]}).encode(),
    "other trust domain": lambda key: spiffe_bundle(DevCA("other.org").bundle),
    "malformed JSON": lambda key: b'{"keys": [',
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_keeps_the_last_good_bundle_and_is_reported_once(fed: Path, partner: DevCA, case: str) -> None:
    path = fed / "partner.org.json"
    atomic_write(path, spiffe_bundle(partner.bundle))
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    assert directory.scan(OWN, at_once=True)
    good = directory.bundles
    [key] = [x509_key(c) for c in partner.bundle]
    atomic_write(path, BAD[case](key))
    assert not directory.scan(OWN) and errors == []  # seen once: maybe a writer half-way
    for _ in range(5):
        assert not directory.scan(OWN)
    assert directory.bundles is good and directory.errors == 1
    [message] = errors
    assert message.startswith(f"identity: federated bundle {path}: ")
    assert message.endswith("; keeping the last good bundle of 'partner.org' (from partner.org.json)")
    newer = DevCA(PARTNER)
    atomic_write(path, spiffe_bundle(newer.bundle, sequence=2))
    assert directory.scan(OWN) and directory.bundles[PARTNER] == newer.bundle
    atomic_write(path, BAD[case](key))  # the same bad content after a good one: news again
    scan_twice(directory)
    assert len(errors) == 2


def test_a_half_written_file_is_not_reported(fed: Path, partner: DevCA) -> None:
    path = fed / "partner.org.json"
    data = spiffe_bundle(partner.bundle)
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    directory.scan(OWN, at_once=True)
    path.write_bytes(data[: len(data) // 2])  # a writer that does not rename, half-way
    assert not directory.scan(OWN)
    path.write_bytes(data)
    assert directory.scan(OWN) and directory.bundles[PARTNER] == partner.bundle
    assert errors == []


def test_a_bad_file_for_a_new_trust_domain_leaves_it_untrusted(fed: Path) -> None:
    atomic_write(fed / "partner.org.json", b"{}")
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    assert not directory.scan(OWN, at_once=True) and dict(directory.bundles) == {}
    assert errors == [f"identity: federated bundle {fed / 'partner.org.json'}: 'keys' is missing (a SPIFFE bundle "
                      "is a JWK Set); 'partner.org' stays untrusted until a good file arrives"]


def test_a_bundle_for_the_own_trust_domain_is_refused(fed: Path) -> None:
    own = DevCA(OWN)
    atomic_write(fed / "example.org.json", spiffe_bundle(own.bundle))
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    directory.scan(OWN, at_once=True)
    scan_twice(directory)
    assert dict(directory.bundles) == {}
    assert errors == [f"identity: federated bundle {fed / 'example.org.json'}: is for this node's own trust domain "
                      "'example.org'; refused, it would replace the roots that verify this trust domain (they come "
                      "from the identity source only): remove the file; the file is not used"]


def test_two_files_for_one_trust_domain_and_bad_names_are_refused(fed: Path, partner: DevCA) -> None:
    atomic_write(fed / "partner.org.json", spiffe_bundle(partner.bundle))
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    directory.scan(OWN, at_once=True)
    atomic_write(fed / "partner.org.pem", certs_pem(DevCA(PARTNER).bundle))
    atomic_write(fed / "Partner.ORG.pem", certs_pem(partner.bundle))
    scan_twice(directory)
    assert directory.bundles[PARTNER] == partner.bundle  # the last good one stays
    assert sorted(e.split(": ", 2)[2] for e in errors) == [
        "the file name must be '<trust-domain>.json' or '<trust-domain>.pem' (invalid trust domain 'Partner.ORG': "
        "only a-z, 0-9, '.', '-' and '_' are allowed (trust domains must be lowercase)); the file is not used",
        "trust domain 'partner.org' has two bundle files (partner.org.json, partner.org.pem): remove one; keeping "
        "the last good bundle of 'partner.org' (from partner.org.json)",
        "trust domain 'partner.org' has two bundle files (partner.org.json, partner.org.pem): remove one; keeping "
        "the last good bundle of 'partner.org' (from partner.org.json)",
    ]


def test_an_older_spiffe_sequence_is_refused_until_the_file_is_removed(fed: Path, partner: DevCA) -> None:
    path = fed / "partner.org.json"
    atomic_write(path, spiffe_bundle(partner.bundle, sequence=5))
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    directory.scan(OWN, at_once=True)
    older = DevCA(PARTNER)
    atomic_write(path, spiffe_bundle(older.bundle, sequence=4))
    scan_twice(directory)
    assert directory.bundles[PARTNER] == partner.bundle
    assert "spiffe_sequence 4 is lower than 5 of the bundle in use (an older bundle?)" in errors[0]


def test_a_file_too_large_is_refused(fed: Path, partner: DevCA) -> None:
    atomic_write(fed / "partner.org.json", b" " * (1 << 20) + spiffe_bundle(partner.bundle))
    errors: list[str] = []
    directory = BundleDir(fed, on_error=errors.append)
    directory.scan(OWN, at_once=True)
    assert dict(directory.bundles) == {} and "is larger than 1048576 bytes" in errors[0]


# -- FederatedSource: any source plus the directory ---------------------------------------------


def test_the_directory_adds_to_any_source_and_follows_its_rotations(fed: Path, partner: DevCA) -> None:
    own = DevCA(OWN)
    static = StaticSource(issue_snapshot(own, ALPHA))
    with FederatedSource(static, fed, poll_interval=3600) as source:
        assert sorted(source.current().bundles) == [OWN]
        seen: list[int] = []
        source.subscribe(lambda snap: seen.append(snap.generation))
        atomic_write(fed / "partner.org.pem", certs_pem(partner.bundle))
        added = source.poll()
        assert added is not None and added.bundles[PARTNER] == partner.bundle and seen == [2]
        rotated = static.set(issue_snapshot(own, ALPHA))  # the inner source rotates: the bundle stays
        assert rotated is not None
        assert source.current().serial == rotated.serial and source.current().bundles[PARTNER] == partner.bundle
        (fed / "partner.org.pem").unlink()
        assert source.poll() is None and source.poll() is not None
        assert sorted(source.current().bundles) == [OWN] and seen == [2, 3, 4]
    assert static.closed  # it owns the inner source


def test_the_own_trust_domain_is_never_taken_from_the_directory(fed: Path) -> None:
    own = DevCA(OWN)
    rogue = DevCA(OWN)  # another CA calling itself example.org
    atomic_write(fed / "example.org.json", spiffe_bundle(rogue.bundle))
    errors: list[str] = []
    with FederatedSource(StaticSource(issue_snapshot(own, ALPHA)), fed, poll_interval=3600,
                         on_error=errors.append) as source:
        assert source.current().bundles[OWN] == own.bundle
    assert len(errors) == 1 and "own trust domain 'example.org'" in errors[0]


def test_workload_api_federated_bundles_and_the_directory_add_up(fed: Path, partner: DevCA) -> None:
    """A real Workload API (unix socket) pushing partner.org; the directory holds another partner CA."""
    own, rotated_partner = RawCA(OWN), DevCA(PARTNER)
    leaf, key = own.leaf(ALPHA)
    socket_dir = short_tmpdir("mn-wl-")
    push = x509_response(ALPHA, [leaf], key, [own.certificate])
    push.federated_bundles[PARTNER] = partner.ca_certificate.public_bytes(serialization.Encoding.DER)
    atomic_write(fed / "partner.org.json", spiffe_bundle(rotated_partner.bundle))
    try:
        with ScriptedWorkloadApi(socket_dir / "agent.sock", push) as api, \
                FederatedSource(WorkloadApiSource(api.address, timeout=10), fed, poll_interval=3600) as source:
            assert set(source.current().bundles[PARTNER]) == {partner.ca_certificate, *rotated_partner.bundle}
    finally:
        for p in socket_dir.iterdir():
            p.unlink()
        socket_dir.rmdir()


def test_a_federated_ca_must_be_a_certificate_authority(partner: DevCA) -> None:
    leaf = issue_snapshot(partner, "spiffe://partner.org/app").leaf
    reason = refused(json.dumps({"keys": [x509_key(leaf)]}).encode())
    assert reason.endswith("is not a CA (no basicConstraints CA=true)")
