"""Certificate provider slots without an xDS channel: the plan, the bootstrap, the files, the Clusters.

What gRPC does with the slots (a rotation reaches the next handshake through
a fresh slot, not through the file re-read) is tested through real channels
in tests/test_xds_rotation.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meshnode.devagent.ca import DevCA
from meshnode.errors import ConfigError
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import issue_snapshot
from meshnode.xds import bootstrap as xboot
from meshnode.xds import resources as xres
from meshnode.xds.credentials import verify_nothing_roots
from meshnode.xds.files import RuntimeDir
from meshnode.xds.slots import HOME, SlotPlan
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import unpack

SERVER = "spiffe://example.org/server"


def test_a_rotation_moves_to_a_fresh_slot_never_one_of_the_last_two() -> None:
    """Back to back, the slot the last rotation left may still be held (gRPC is connecting the
    subchannels of the newest one): the default has three fresh slots, used round robin."""
    plan = SlotPlan(xboot.PROVIDER_SLOTS)
    assert plan.current == HOME
    seen = [plan.rotate() for _ in range(7)]
    assert seen == [1, 2, 3, 1, 2, 3, 1]
    assert plan.current == 1 and plan.rotations == 7


def test_the_plan_goes_home_only_for_the_latest_rotation() -> None:
    plan = SlotPlan(4)
    plan.rotate()
    plan.rotate()
    assert not plan.settle(1)  # planned for an older rotation: a newer one is still settling
    assert plan.current == 2
    assert plan.settle(2)
    assert plan.current == HOME
    assert not plan.settle(2)  # already home
    assert plan.rotate() == 3  # fresh slots go on round robin


def test_one_slot_means_no_fresh_slot() -> None:
    plan = SlotPlan(1)
    assert plan.rotate() is None
    assert plan.current == HOME and plan.rotations == 0


def test_the_bootstrap_declares_every_provider_in_every_slot() -> None:
    boot = xboot.Bootstrap("n1", Path("/r/ads.sock"), Path("/r/svid.pem"), {"example.org": Path("/r/bundles.e.json")},
                           bundle_map=True, probe_map_file=Path("/r/p.json"), slots=3, refresh_interval=30)
    providers = json.loads(boot.json)["certificate_providers"]
    assert set(providers) == {
        "meshnode-identity", "meshnode-identity#1", "meshnode-identity#2", "meshnode-bundles:example.org",
        "meshnode-bundles:example.org#1", "meshnode-bundles:example.org#2", xboot.PROBE_PROVIDER,
    }
    assert providers["meshnode-identity#2"]["config"] == {
        "certificate_file": "/r/2.svid.pem", "private_key_file": "/r/2.svid.pem", "refresh_interval": "30s"}
    assert providers["meshnode-bundles:example.org#1"]["config"] == {
        "spiffe_bundle_map_file": "/r/1.bundles.e.json", "refresh_interval": "30s"}
    assert providers[xboot.PROBE_PROVIDER]["config"]["spiffe_bundle_map_file"] == "/r/p.json"  # one probe map


@pytest.mark.parametrize(("slots", "interval"), [(0, 1), (10, 1), (True, 1), (3, 0), (3, 1.5), (3, False)])
def test_slots_and_refresh_interval_are_checked(slots: int, interval: int) -> None:
    with pytest.raises(ConfigError, match=r"^xds: "):
        xboot.Bootstrap("n1", Path("/s"), Path("/i"), slots=slots, refresh_interval=interval)


def test_every_slot_gets_the_same_files_and_only_changes_count() -> None:
    ca = DevCA("example.org")
    snap = issue_snapshot(ca, "spiffe://example.org/client", map_dns=False)
    with RuntimeDir("alpha") as rdir:
        rdir.write_identity(snap, ["example.org"], bundle_map=True, placeholder=verify_nothing_roots(), slots=3)
        names = sorted(p.name for p in rdir.path.iterdir() if p.name != "owner")
        assert names == ["1.bundles.example.org.json", "1.svid.pem", "2.bundles.example.org.json", "2.svid.pem",
                         "bundles.example.org.json", "svid.pem"]
        for slot in (1, 2):
            assert xboot.slot_path(rdir.identity_path, slot).read_bytes() == snap.key_pem + snap.chain_pem
        version = rdir.content_version
        rdir.write_identity(snap, ["example.org"], bundle_map=True, placeholder=verify_nothing_roots(), slots=3)
        assert rdir.content_version == version  # nothing changed: no rotation to serve
        rotated = issue_snapshot(ca, "spiffe://example.org/client", map_dns=False)
        rdir.write_identity(rotated, ["example.org"], bundle_map=True, placeholder=verify_nothing_roots(), slots=3)
        assert rdir.content_version > version
        assert xboot.slot_path(rdir.identity_path, 2).read_bytes() == rotated.key_pem + rotated.chain_pem
        path = rdir.path
    assert not path.exists()  # every slot's copy of the key is gone


def test_trust_domain_names_cannot_collide_with_slot_copies() -> None:
    """A slot's prefix is a digit and a dot: file names of slot 0 start with a letter."""
    paths = {xboot.slot_path(Path("/r") / f"bundles.{td}.json", slot)
             for td in ("example.org", "1.example.org", "example.org.1") for slot in range(3)}
    assert len(paths) == 9
    assert all(re.fullmatch(r"([0-9]\.)?bundles\.[a-z0-9.]+\.json", p.name) for p in paths)


def test_the_clusters_name_the_providers_of_one_slot() -> None:
    peer = xres.PeerTarget("127.0.0.1:7000", parse_spiffe_id(SERVER))
    for slot, suffix in ((0, ""), (2, "#2")):
        [cluster] = xres.peer_resources({"server": peer}, bundle_map=True, slot=slot)[xres.CLUSTER_TYPE].values()
        tls = unpack(cluster.transport_socket.typed_config, pb.UpstreamTlsContext).common_tls_context
        assert tls.tls_certificate_provider_instance.instance_name == "meshnode-identity" + suffix
        validation = tls.validation_context.ca_certificate_provider_instance
        assert validation.instance_name == "meshnode-bundles:example.org" + suffix
