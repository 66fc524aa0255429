"""Rotation and control-plane failures on spiffe-id channels (subprocess scenarios)."""

from __future__ import annotations

import statistics

import pytest

from tests.support.xds import run_scenario


@pytest.mark.slow
@pytest.mark.parametrize("roots", ["pem", "bundle-map"])
def test_rotation_under_load_fails_no_call(roots: str) -> None:
    """10 client+server SVID rotations, one of them across a CA rotation, on one channel under load.

    Both ways of giving gRPC the roots: PEM files, and the A87 bundle maps nodes use.

    The server recycles connections every ~0.3 s, so the load keeps making handshakes with
    whatever certificates are current. The scenario waits for each pushed SVID to appear on a
    fresh connection's handshake and then for the load to make calls, before the next rotation.
    Push-to-new-handshake is printed (gRPC's file watcher re-reads every second), not asserted.
    """
    args = {"rotations": 10, "ca_rotation_at": 5, "workers": 4, "bundle_map": roots == "bundle-map"}
    out = run_scenario("rotation", args, timeout=300)
    assert out["failed"] == 0, out["failures"]
    assert out["loaded"] == [True] * 10  # the load ran on every rotated SVID
    assert out["ca_rotated"] and out["svids_from_new_ca"]
    assert out["serials_seen"] == 11  # the first SVID and ten rotations all served calls
    assert out["final_serial_is_latest"]
    latencies = out["latencies"]
    print(f"\n{out['calls']} calls; push-to-new-handshake: median {statistics.median(latencies):.3f}s "
          f"max {max(latencies):.3f}s")


@pytest.mark.slow
def test_calls_survive_the_control_plane_stopping_and_it_restarts() -> None:
    out = run_scenario("ads-restart", timeout=60)
    assert out["before"] == "one"
    assert not out["down_serving"]
    assert out["down_existing_channel"]["ok"]  # cached configuration
    assert out["down_new_channel"]["ok"]
    assert out["restarted"] and out["update_after_restart"]
    assert out["restarted_after_unlink"] and out["update_after_unlink"]  # a removed socket is noticed too
    assert out["update_after_restart_ads"]
    assert out["synced"] and out["restarts"] == 3
