"""meshnode.xds building blocks that need no xDS channel: resources, files, bootstrap, wording."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from meshnode.devagent.ca import DevCA, validate_dns_name
from meshnode.errors import ConfigError, InvalidSpiffeIdError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import issue_snapshot, short_tmpdir
from meshnode.xds import bootstrap as xboot
from meshnode.xds import resources as xres
from meshnode.xds.credentials import verify_nothing_roots
from meshnode.xds.files import RuntimeDir, spiffe_bundle_map
from meshnode.xds.rpc_errors import SAN_MISMATCH, explain_details
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import unpack

SERVER = "spiffe://example.org/ns/prod/server"


def tls_of(cluster: pb.Cluster) -> pb.UpstreamTlsContext:
    tls: pb.UpstreamTlsContext = unpack(cluster.transport_socket.typed_config, pb.UpstreamTlsContext)
    return tls


# -- the SAN matcher ----------------------------------------------------------------


@pytest.mark.parametrize(
    "presented, accepted",
    [
        (SERVER, True),
        ("spiffe://example.org/ns/prod/SERVER", False),  # gRPC's exact matcher would accept this
        ("spiffe://example.org/ns/prod/server.", False),  # ... and this
        ("spiffe://example.org/ns/prod/server/x", False),
        ("spiffe://example.org/ns/prod/serve", False),
        ("spiffe://example_org/ns/prod/server", False),  # '.' is a literal dot
        ("xspiffe://example.org/ns/prod/server", False),
    ],
)
def test_san_regex_matches_exactly_one_id(presented: str, accepted: bool) -> None:
    pattern = xres.san_regex(parse_spiffe_id(SERVER))
    assert bool(re.fullmatch(pattern, presented)) is accepted


def test_cluster_pins_the_peer_id_with_roots_of_its_own_trust_domain() -> None:
    peer = xres.PeerTarget("10.1.2.3:7002", parse_spiffe_id("spiffe://other.org/billing"))
    resources = xres.peer_resources({"billing": peer}, bundle_map=False)
    cluster = resources[xres.CLUSTER_TYPE]["billing"]
    assert cluster.type == pb.Cluster.LOGICAL_DNS
    socket_address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (socket_address.address, socket_address.port_value) == ("10.1.2.3", 7002)
    assert cluster.transport_socket.name == xres.TLS_TRANSPORT_SOCKET
    context = tls_of(cluster).common_tls_context
    assert context.tls_certificate_provider_instance.instance_name == xboot.IDENTITY_PROVIDER
    validation = context.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "meshnode-bundle:other.org"
    [matcher] = validation.match_subject_alt_names
    assert matcher.WhichOneof("match_pattern") == "safe_regex"
    assert re.fullmatch(matcher.safe_regex.regex, "spiffe://other.org/billing")
    assert not validation.match_typed_subject_alt_names  # gRPC ignores it: never rely on it
    listener = resources[xres.LISTENER_TYPE]["billing"]
    assert listener.name == "billing" and listener.HasField("api_listener")


def test_bundle_map_mode_uses_the_map_of_the_peer_trust_domain() -> None:
    peer = xres.PeerTarget("peer.internal:443", "spiffe://other.org/billing")  # type: ignore[arg-type]
    cluster = xres.peer_resources({"b": peer}, bundle_map=True)[xres.CLUSTER_TYPE]["b"]
    validation = tls_of(cluster).common_tls_context.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "meshnode-bundles:other.org"


def test_peer_target_parses_ipv6_and_dns_names() -> None:
    v6 = xres.PeerTarget("[::1]:7000", parse_spiffe_id(SERVER))
    assert (v6.host, v6.port, v6.trust_domain) == ("::1", 7000, "example.org")
    named = xres.PeerTarget("localhost:7000", parse_spiffe_id(SERVER))
    assert named.host == "localhost"


def test_a_node_peer_config_is_a_peer_spec() -> None:
    from meshnode.config.node import PeerConfig

    config = PeerConfig(name="beta", address="127.0.0.1:7002", spiffe_id=parse_spiffe_id(SERVER))
    target = xres.PeerTarget.of(config)
    assert (target.host, target.port, target.spiffe_id) == ("127.0.0.1", 7002, config.spiffe_id)


@pytest.mark.parametrize(
    "address, spiffe_id, error",
    [
        ("10.0.0.1", SERVER, ConfigError),
        ("10.0.0.1:0", SERVER, ConfigError),
        ("::1:7000", SERVER, ConfigError),
        ("10.0.0.1:7000", "spiffe://example.org", ConfigError),
        ("10.0.0.1:7000", "spiffe://example.org/a/../b", InvalidSpiffeIdError),
    ],
)
def test_peer_target_refuses_bad_input(address: str, spiffe_id: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        xres.PeerTarget(address, spiffe_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "ü"])
def test_peer_names_must_be_plain(name: str) -> None:
    with pytest.raises(ConfigError, match="peer name"):
        xres.validate_peer_name(name)


# -- meshnode's issuers refuse the SAN-type trap ------------------------------------------


@pytest.mark.parametrize("name", [SERVER, "spiffe://example.org", "*.org/server", "a/b", "a:b"])
def test_devca_refuses_dns_sans_spelled_like_spiffe_ids(name: str) -> None:
    """gRPC's SAN matcher ignores SAN types, so no meshnode CA may mint such a DNS SAN."""
    with pytest.raises(ConfigError, match="not a DNS host name"):
        validate_dns_name(name)
    with pytest.raises(ConfigError, match="not a DNS host name"):
        DevCA("example.org").issue(SERVER, dt.timedelta(hours=1), dns_names=(name,), map_dns=False)


# -- the runtime directory ----------------------------------------------------------


def snapshot_with(other: DevCA | None = None) -> IdentitySnapshot:
    ca = DevCA("example.org")
    return issue_snapshot(ca, "spiffe://example.org/client", map_dns=False, federated=[other] if other else [])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_identity_files_are_private_atomic_and_removed() -> None:
    snap = snapshot_with(DevCA("other.org"))
    with RuntimeDir("alpha") as rdir:
        assert mode(rdir.path) == 0o700
        missing = rdir.write_identity(snap, ["example.org", "other.org", "third.org"], bundle_map=False,
                                      placeholder=verify_nothing_roots())
        assert missing == ["third.org"]
        names = sorted(p.name for p in rdir.path.iterdir())
        assert names == ["bundle.example.org.pem", "bundle.other.org.pem", "bundle.third.org.pem", "owner", "svid.pem"]
        assert all(mode(rdir.path / n) == 0o600 for n in names)
        svid = rdir.identity_path.read_bytes()
        assert svid == snap.key_pem + snap.chain_pem  # one file: key and chain change together
        assert rdir.bundle_path("other.org").read_bytes() == snap.bundle_pem("other.org")
        assert rdir.bundle_path("third.org").read_bytes() == verify_nothing_roots()
        before = rdir.identity_path.stat().st_ino
        rdir.write_identity(snap, ["example.org"], bundle_map=False, placeholder=b"")
        assert rdir.identity_path.stat().st_ino == before  # unchanged content is not rewritten
        rotated = snapshot_with()
        rdir.write_identity(rotated, ["example.org"], bundle_map=False, placeholder=b"")
        assert rdir.identity_path.stat().st_ino != before  # a new file renamed over the old one
        assert rdir.identity_path.read_bytes() == rotated.key_pem + rotated.chain_pem
        assert not list(rdir.path.glob(".*.tmp"))
        path = rdir.path
    assert not path.exists()
    rdir.close()  # idempotent


def _ed25519_ca(trust_domain: str) -> x509.Certificate:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "an Ed25519 CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .sign(key, None)
    )


def test_bundle_maps_one_per_trust_domain_with_only_keys_grpc_takes(caplog: pytest.LogCaptureFixture) -> None:
    other = DevCA("other.org")
    snap = snapshot_with(other)
    odd = _ed25519_ca("other.org")
    snap = IdentitySnapshot(snap.spiffe_id, snap.chain, snap.private_key,
                            {**snap.bundles, "other.org": (*other.bundle, odd)})
    with RuntimeDir("alpha") as rdir:
        missing = rdir.write_identity(snap, ["example.org", "other.org", "third.org"], bundle_map=True,
                                      placeholder=verify_nothing_roots())
        assert missing == ["third.org"]
        assert sorted(p.name for p in rdir.path.glob("bundles.*.json")) == [
            "bundles.example.org.json", "bundles.other.org.json", "bundles.third.org.json"]
        maps = {td: json.loads(rdir.bundle_path(td, bundle_map=True).read_text())["trust_domains"]
                for td in ("example.org", "other.org", "third.org")}
        [nothing] = maps["third.org"]["third.org"]["keys"]  # no bundle: roots that verify nothing
        assert base64.b64decode(nothing["x5c"][0]) == x509.load_pem_x509_certificate(
            verify_nothing_roots()).public_bytes(Encoding.DER)
        assert list(maps["example.org"]) == ["example.org"]  # each map holds its own trust domain only
        [key] = maps["other.org"]["other.org"]["keys"]  # the Ed25519 CA is left out: gRPC would refuse the map
        assert key["x5c"] == [base64.b64encode(other.ca_certificate.public_bytes(Encoding.DER)).decode()]
        rdir.write_identity(snap, ["other.org"], bundle_map=True, placeholder=verify_nothing_roots())
    [warning] = [r.getMessage() for r in caplog.records if "gRPC takes only EC and RSA" in r.getMessage()]
    assert warning.startswith("xds: a root of trust domain 'other.org' (serial ")  # once, not on every write
    assert "has a key of type Ed25519;" in warning


def test_a_given_runtime_dir_must_be_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ConfigError, match="mode 0700"):
        RuntimeDir("alpha", shared)
    link = tmp_path / "link"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    link.symlink_to(private)
    with pytest.raises(ConfigError, match="not a symlink"):
        RuntimeDir("alpha", link)


def test_an_existing_private_dir_is_kept_but_emptied() -> None:
    base = short_tmpdir()
    with RuntimeDir("alpha", base) as rdir:
        rdir.write_identity(snapshot_with(), ["example.org"], bundle_map=False, placeholder=b"")
    assert base.is_dir() and not list(base.iterdir())
    base.rmdir()


def test_runtime_dir_too_long_for_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    with pytest.raises(ConfigError, match="too long for a unix socket"):
        RuntimeDir("alpha", deep)
    assert not deep.exists()


def test_spiffe_bundle_map_document() -> None:
    ca, other = DevCA("example.org"), DevCA("other.org")
    doc = json.loads(spiffe_bundle_map({"example.org": ca.bundle, "other.org": other.bundle}))
    assert sorted(doc["trust_domains"]) == ["example.org", "other.org"]
    [key] = doc["trust_domains"]["other.org"]["keys"]
    assert key["kty"] == "EC" and key["use"] == "x509-svid" and len(key["x5c"]) == 1


# -- the bootstrap document (installing it is tested in subprocesses) ----------------------


def test_bootstrap_declares_one_roots_provider_per_trust_domain() -> None:
    boot = xboot.Bootstrap("n1", Path("/r/ads.sock"), Path("/r/svid.pem"),
                           {"example.org": Path("/r/a.pem"), "other.org": Path("/r/b.pem")})
    doc = json.loads(boot.json)
    assert doc["xds_servers"][0]["server_uri"] == "unix:/r/ads.sock"
    assert doc["xds_servers"][0]["server_features"] == ["xds_v3"]
    providers = doc["certificate_providers"]
    assert providers[xboot.IDENTITY_PROVIDER]["config"] == {
        "certificate_file": "/r/svid.pem", "private_key_file": "/r/svid.pem", "refresh_interval": "1s"}
    assert providers["meshnode-bundle:other.org"]["config"] == {"ca_certificate_file": "/r/b.pem",
                                                                "refresh_interval": "1s"}
    assert boot.trust_domains == {"example.org", "other.org"}
    boot.check_in_force()  # nothing to check without a bundle map


def test_bundle_map_must_really_be_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    boot = xboot.Bootstrap("n1", Path("/r/ads.sock"), Path("/r/svid.pem"),
                           {"example.org": Path("/r/a.json"), "other.org": Path("/r/b.json")},
                           bundle_map=True, probe_map_file=Path("/r/p.json"))
    providers = json.loads(boot.json)["certificate_providers"]
    # one map per trust domain, and no flat CA file beside any map
    assert providers["meshnode-bundles:other.org"]["config"] == {"spiffe_bundle_map_file": "/r/b.json",
                                                                 "refresh_interval": "1s"}
    assert providers[xboot.PROBE_PROVIDER]["config"] == {"spiffe_bundle_map_file": "/r/p.json",
                                                         "refresh_interval": "1s"}
    assert set(providers) == {xboot.IDENTITY_PROVIDER, xboot.PROBE_PROVIDER, "meshnode-bundles:example.org",
                              "meshnode-bundles:other.org"}
    assert boot.trust_domains == {"example.org", "other.org"}
    monkeypatch.delenv(xboot.SPIFFE_BUNDLE_MAP_ENV, raising=False)
    with pytest.raises(ConfigError, match="GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true"):
        boot.check_in_force()
    monkeypatch.setenv(xboot.SPIFFE_BUNDLE_MAP_ENV, "false")
    with pytest.raises(ConfigError, match="it is 'false' in this process"):
        boot.check_in_force()
    monkeypatch.setenv(xboot.SPIFFE_BUNDLE_MAP_ENV, "TRUE")
    boot.check_in_force()


def test_the_probe_map_belongs_to_a_bundle_map_bootstrap() -> None:
    with pytest.raises(ConfigError):
        xboot.Bootstrap("n1", Path("/s"), Path("/i"), {"example.org": Path("/a")}, probe_map_file=Path("/m"))


# -- meshnode's wording ---------------------------------------------------------------


def test_a_refused_bundle_map_is_explained() -> None:
    peer = xres.PeerTarget("10.0.0.2:7002", parse_spiffe_id(SERVER))
    text = explain_details("b", peer, "connections to all backends failing; last error: UNKNOWN: ipv4:10.0.0.2:7002: "
                           "Failed to create security handshaker. (xDS node ID:n)")
    assert text is not None and text.startswith(
        "meshnode: gRPC could not set up TLS for peer 'b' (10.0.0.2:7002): it refused the roots of trust domain "
        "'example.org'")


def test_san_mismatch_names_the_expected_identity() -> None:
    peer = xres.PeerTarget("10.0.0.2:7002", parse_spiffe_id(SERVER))
    details = f"last error: UNKNOWN: ipv4:10.0.0.2:7002: Custom verification check failed: {SAN_MISMATCH}"
    text = explain_details("billing", peer, details)
    assert text is not None
    assert text.startswith("meshnode: peer 'billing' (10.0.0.2:7002)")
    assert SERVER in text and "[peers.billing]" in text and text.endswith(f"[{details}]")


def test_chain_failures_name_the_trust_domain_and_cause() -> None:
    peer = xres.PeerTarget("10.0.0.2:7002", parse_spiffe_id(SERVER))
    details = "Tls handshake failed: CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
    assert "bundle of trust domain 'example.org'" in (explain_details("b", peer, details) or "")
    assert "no trust bundle for 'example.org'" in (explain_details("b", peer, details, no_bundle=True) or "")
    assert explain_details("b", peer, "Socket closed") is None


def test_resources_travel_under_envoy_type_urls_and_unpack_only_as_their_type() -> None:
    cluster = xres.peer_resources({"b": xres.PeerTarget("127.0.0.1:7001", parse_spiffe_id(SERVER))},
                                  bundle_map=False)[xres.CLUSTER_TYPE]["b"]
    packed = cluster.transport_socket.typed_config
    assert packed.type_url == "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    assert xres.CLUSTER_TYPE == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    with pytest.raises(ValueError, match=re.escape("expected type.googleapis.com/envoy.config.cluster.v3.Cluster")):
        unpack(packed, pb.Cluster)
