"""Rotation and control-plane failures on spiffe-id channels (subprocess scenarios)."""

from __future__ import annotations

import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.replicas import Client, mesh
from tests.support.xds import run_scenario


@pytest.mark.slow
@pytest.mark.parametrize("roots", ["pem", "bundle-map"])
def test_rotation_under_load_fails_no_call(roots: str) -> None:
    """10 client+server SVID rotations, one of them across a CA rotation, on one channel under load.

    Both ways of giving gRPC the roots: PEM files, and the A87 bundle maps nodes use.

    The server recycles connections every ~0.3 s, so the load keeps making handshakes with
    whatever certificates are current. The scenario waits for each pushed SVID to appear on a
    fresh connection's handshake and then for the load to make calls, before the next rotation.
    Push-to-new-handshake is printed (a fresh certificate provider slot: milliseconds), not asserted.
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


@pytest.mark.slow
def test_a_rotation_reaches_the_next_handshake_through_the_push_not_the_file_reread() -> None:
    """gRPC re-reads the files only every hour here, and the server never ends a connection: each
    new SVID (one of them across a CA rotation) still reaches the open channel's calls and a fresh
    connection, because the control plane serves the Clusters in a fresh certificate provider slot,
    whose provider gRPC builds and fills from the files at once. No call fails."""
    out = run_scenario("push-rotation", {"refresh_interval": 3600, "rotations": 4, "ca_rotation_at": 2},
                       timeout=240)
    assert out["refresh_intervals"] == ["3600s"]
    assert out["failed"] == 0, out["failures"]
    assert out["ca_rotated"]
    for rotation in out["each"]:
        assert rotation["on_channel"] and rotation["fresh_connection"], out["each"]
        before, after = rotation["slot"]
        assert after != before and after != 0, out["each"]


@pytest.mark.slow
def test_after_a_rotation_the_clusters_go_home_and_its_connections_carry_the_new_svid() -> None:
    """Two refresh intervals (1 s) after a rotation the Clusters name the home slot again, whose
    provider gRPC held all along and has re-read the files by then: the connections made for it
    present the newest SVID, no older one, and no call fails."""
    out = run_scenario("push-rotation", {"refresh_interval": 1, "rotations": 2, "settle": True}, timeout=240)
    assert out["failed"] == 0, out["failures"]
    assert all(r["on_channel"] and r["fresh_connection"] for r in out["each"]), out["each"]
    assert out["home"] and out["calls_after_home"]
    assert out["serials_after_home"] == [out["latest"]]


def asked_until(client: Client, command: str, done: Callable[[dict[str, Any]], bool], what: str,
                timeout: float = 30.0) -> dict[str, Any]:
    """Ask the client node ``command`` until ``done(answer)``; the timeout is a safety net."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.ask(command)
        if done(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}; last answer {answer}\n{client.log()}")
        time.sleep(0.05)


@pytest.mark.slow
def test_after_a_rotation_a_node_pairs_next_connection_presents_the_new_svid() -> None:
    """Real processes: a dev agent, a `meshnode run` server that never ends a connection
    (max_connection_age = 0) and answers with the serial of the caller's certificate, and a client
    node calling it as a spiffe-id peer. The agent rotates the SVIDs (SIGUSR1): the client's calls
    through its one peer channel reach the server with the new SVID, on a connection the control
    plane's push made. (Before, the open connection kept the old SVID until the server ended it.)"""
    with mesh("mn-rot-") as m:
        m.replica(2, services=["tests.support.services:CallerSerial"], node_extra="max_connection_age = 0")
        client = m.client("spiffe-id", endpoints=f'address = "127.0.0.2:{m.port}"')
        first = client.ask("identity")
        assert client.ask("serial") == {"serial": first["serial"]}
        m.agent.proc.send_signal(signal.SIGUSR1)
        rotated = asked_until(client, "identity", lambda a: a["serials"] == 2, "the client node's new SVID")
        assert rotated["serial"] != first["serial"]
        seen = asked_until(client, "serial", lambda a: a != {"serial": first["serial"]},
                           "a call that the server sees with another certificate")
        assert seen == {"serial": rotated["serial"]}
