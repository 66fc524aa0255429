"""spiffe-id channels through meshnode's xDS control plane, one scenario per subprocess.

gRPC reads the xDS bootstrap from the process environment, so nothing here
sets it in the pytest process: each scenario (tests/support/xds_scenarios.py) runs
in a fresh interpreter and reports JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import certs_pem
from tests.support.xds import pem_key, run_scenario

SERVER_ID = "spiffe://example.org/server"
SAN_MISMATCH = "SANs from certificate did not match SANs from xDS control plane"


@pytest.fixture(scope="module")
def verify() -> dict[str, Any]:
    return run_scenario("verify")


def test_a_server_with_only_a_uri_san_is_reached_and_verified(verify: dict[str, Any]) -> None:
    result = verify["results"]["uri-only"]
    assert result["ok"], result
    assert result["client_serial"] == verify["client_serial"]  # mTLS: the server saw the node's SVID
    assert verify["sync"]["server"] == "uri-only"  # sync channels work as well as grpc.aio ones


@pytest.mark.parametrize("case", ["other-id", "case-variant", "trailing-dot"])
def test_another_id_from_the_same_ca_is_refused(verify: dict[str, Any], case: str) -> None:
    result = verify["results"][case]
    assert not result["ok"] and result["code"] == "UNAVAILABLE"
    assert SAN_MISMATCH in result["details"]
    assert result["explained"].startswith(f"meshnode: peer '{case}' (")
    assert f"is not for {SERVER_ID}" in result["explained"]


def test_a_ca_of_another_trust_domain_cannot_vouch_for_this_one(verify: dict[str, Any]) -> None:
    """The client trusts other.org's CAs too, but verifies example.org peers with example.org roots only."""
    result = verify["results"]["foreign-claim"]
    assert not result["ok"] and result["code"] == "UNAVAILABLE"
    assert "CERTIFICATE_VERIFY_FAILED" in result["details"]
    assert "bundle of trust domain 'example.org' does not verify" in result["explained"]
    assert verify["results"]["other-td"]["ok"]  # other.org's own peer passes with other.org's roots


def test_a_peer_without_a_bundle_fails_closed_with_advice(verify: dict[str, Any]) -> None:
    result = verify["results"]["no-bundle-td"]
    assert not result["ok"]
    assert "no trust bundle for 'third.org'" in result["explained"]


def test_a_removed_peer_is_unreachable_at_once(verify: dict[str, Any]) -> None:
    """The control plane pushes the removal; an open channel stops reaching the peer."""
    assert verify["removed_peer_fails"]
    after = verify["after_removal"]
    assert after["code"] == "UNAVAILABLE" and "does not exist" in after["details"]
    assert after["explained"].startswith("meshnode: peer 'other-td' is no longer configured")
    assert verify["unknown_peer"].startswith("PeerError: xds: no spiffe-id peer named 'other-id'")


def test_identity_files_are_private_and_removed_on_close(verify: dict[str, Any]) -> None:
    slot_0 = ["bundle.example.org.pem", "bundle.other.org.pem", "bundle.third.org.pem", "svid.pem"]
    copies = [f"{slot}.{name}" for slot in (1, 2, 3) for name in slot_0]  # the certificate provider slots
    assert verify["files"] == sorted(["ads.sock", "owner", *slot_0, *copies])
    assert set(verify["modes"].values()) == {"0o600"} and verify["dir_mode"] == "0o700"
    assert verify["runtime_dir_removed"]


@pytest.fixture(scope="module")
def pins() -> dict[str, Any]:
    return run_scenario("pins")


def test_pin_grpc_matches_a_dns_san_spelled_like_the_spiffe_id(pins: dict[str, Any]) -> None:
    """The SAN-type trap: gRPC tests URI, IP and DNS SANs alike; no setting changes that.

    meshnode's issuers refuse such DNS SANs (test_xds_resources). If this fails after a
    gRPC upgrade, gRPC started checking SAN types: update the security notes.
    """
    assert pins["results"]["regex-vs-dns-san-trap"]["ok"]


def test_pin_grpc_exact_matcher_follows_dns_rules(pins: dict[str, Any]) -> None:
    """Why meshnode sends a safe_regex: exact ignores case and a trailing dot."""
    assert pins["results"]["exact-vs-case-variant"]["ok"]
    assert pins["results"]["exact-vs-trailing-dot"]["ok"]


def test_pin_grpc_ignores_typed_san_matchers(pins: dict[str, Any]) -> None:
    """match_typed_subject_alt_names is dropped silently: any certificate of the CA passes."""
    assert pins["results"]["typed-matcher-only-vs-other-id"]["ok"]


def test_a_cluster_without_tls_config_is_never_reached(pins: dict[str, Any]) -> None:
    results = pins["results"]
    assert not results["no-tls"]["ok"] and results["no-tls"]["code"] == "UNAVAILABLE"
    assert pins["plaintext_calls"] == 0  # meshnode's fallback never talked plaintext
    assert not results["no-tls-vs-tls-server"]["ok"]  # nor accepted any certificate
    assert results["no-tls-with-insecure-fallback"]["ok"]  # the control: insecure fallback would have


def test_rejected_resources_are_nacked_and_recorded(pins: dict[str, Any]) -> None:
    assert not pins["results"]["static-cluster"]["ok"]
    [nack] = pins["nacks"]
    assert nack["type"] == "Cluster" and "unknown discovery type" in nack["message"]


def test_one_bootstrap_per_process() -> None:
    out = run_scenario("clash")
    assert out["alpha"]["ok"]
    assert out["second_node"].startswith("PeerError: xds: node 'beta' cannot install its xDS bootstrap: "
                                         "node 'alpha' in this process owns it")
    assert "replaced" in out["overwritten"] and out["overwritten"].startswith("PeerError")
    assert out["env_after_close"] is None
    assert "already set by something else" in out["foreign_config"]
    assert "GRPC_XDS_BOOTSTRAP=/etc/some-bootstrap.json is set" in out["bootstrap_file"]
    assert out["epsilon"]["ok"]  # a node started after the first one closed


def test_two_nodes_in_two_processes_call_each_other(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    procs: dict[str, subprocess.Popen[str]] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS")}
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        issued = ca.issue(f"spiffe://example.org/{name}", dt.timedelta(hours=1), map_dns=False)
        files = {"key": pem_key(issued.private_key), "chain": certs_pem(issued.chain), "roots": certs_pem(ca.bundle)}
        paths = {}
        for kind, data in files.items():
            paths[kind] = str(tmp_path / f"{name}.{kind}.pem")
            Path(paths[kind]).write_bytes(data)
        args = {"name": name, "files": paths, "peer_id": f"spiffe://example.org/{other}"}
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.support.xds_scenarios", "node", json.dumps(args)],
            cwd=Path(__file__).resolve().parent.parent, env={**env, "GRPC_VERBOSITY": "NONE"},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    try:
        addresses = {}
        for name, proc in procs.items():
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ADDRESS "), line + (proc.stderr.read() if proc.stderr else "")
            addresses[name] = line.split()[1]
        for name, proc in procs.items():  # both nodes learn the other's address before either waits
            assert proc.stdin is not None
            proc.stdin.write(addresses["beta" if name == "alpha" else "alpha"] + "\n")
            proc.stdin.flush()
        results = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=60)
            [result] = [json.loads(x[7:]) for x in stdout.splitlines() if x.startswith("RESULT ")] or [None]
            assert result is not None, stderr[-3000:]
            results[name] = result
    finally:
        for proc in procs.values():  # cleanup that cannot raise: it never hides the first failure
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        assert results[name]["reached"] and results[name]["reply"].get("server") == other, results[name]
        assert results[name]["was_called"]
    assert results["alpha"]["bootstrap"] != results["beta"]["bootstrap"]  # each process has its own
