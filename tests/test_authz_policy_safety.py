"""A node refuses a policy that can only deny, in any spelling, at boot and on reload (issue 11, class 4).

Production refuses at boot (``meshnode run`` exits 2) and keeps the last
good policy on reload (logged once, counted); staging boots and warns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshnode.boot import boot
from meshnode.config.node import node_config_from_dict
from meshnode.devagent.ca import DevCA
from meshnode.errors import PolicyError
from meshnode.testing import ManualSource, issue_snapshot

SERVER = "spiffe://example.org/node/server"
ALPHA = "spiffe://example.org/node/alpha"
GOOD = {"name": "p", "allow_rules": [{"name": "alpha", "source": {"principals": [ALPHA]}}]}

# each one denies every call (or every health check) of a node that accepts example.org only
DENY_EVERYTHING = {
    "principal spiffe://*": ({"deny_rules": [{"name": "d", "source": {"principals": ["spiffe://*"]}}]},
                             "deny rule 'd' matches every caller and every method"),
    "path /*": ({"deny_rules": [{"name": "d", "request": {"paths": ["/*"]}}]},
                "deny rule 'd' matches every caller and every method"),
    "the only trust domain": ({"deny_rules": [{"name": "d", "source": {"principals": ["spiffe://example.org/*"]}}]},
                              "deny rule 'd' matches every caller and every method"),
    "allow rules of a trust domain the node does not accept": (
        {"allow_rules": [{"name": "theirs", "source": {"principals": ["spiffe://other.org/*"]}}]},
        "can never allow a call"),
    "health": ({"deny_rules": [{"name": "d", "request": {"paths": ["/grpc.health.v1.Health/*"]}}]},
               "denies /grpc.health.v1.Health/Check and /grpc.health.v1.Health/Watch to every caller"),
}


def policy_doc(change: dict[str, Any]) -> str:
    return json.dumps({**GOOD, **change})


def config(mode: str, policy: Path) -> Any:
    return node_config_from_dict(
        {"node": {"name": "n", "listen": "127.0.0.1:0", "mode": mode},
         "identity": {"trust_domain": "example.org"}, "authz": {"policy": str(policy)}},
        environ={},
    )


@pytest.mark.parametrize("case", list(DENY_EVERYTHING))
def test_boot_refuses_in_production_and_warns_in_staging(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    change, message = DENY_EVERYTHING[case]
    path = tmp_path / "policy.json"
    path.write_text(policy_doc(change))
    source = ManualSource(DevCA("example.org"), SERVER)
    with contextlib.closing(boot(config("production", path), source=source)) as booted:
        with pytest.raises(PolicyError, match=message):
            booted.enforce()
    with contextlib.closing(boot(config("staging", path), source=source)) as booted:
        with caplog.at_level(logging.WARNING, logger="meshnode.boot"):
            booted.enforce()
    [warning] = [r.getMessage() for r in caplog.records if "would refuse in production" in r.getMessage()]
    assert message in warning


def failures(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    return sum(
        int(getattr(point, "value", 0))
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics if m.name == "meshnode.authz.policy_reload_failures"
        for point in m.data.data_points
    )


def rewrite(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_production_keeps_the_last_good_policy_when_a_reload_would_deny_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="meshnode.authz")
    path = tmp_path / "policy.json"
    path.write_text(policy_doc({}))
    reader = InMemoryMetricReader()
    source = ManualSource(DevCA("example.org"), SERVER)
    booted = boot(config("production", path), source=source, meter_provider=MeterProvider(metric_readers=[reader]))
    booted.enforce()
    with contextlib.closing(booted), booted.authorizer() as authz:
        for count, (case, (change, message)) in enumerate(DENY_EVERYTHING.items(), start=1):
            rewrite(path, policy_doc(change))
            wait_until(lambda n=count: failures(reader) == n, f"{case}: the refused reload was not counted")
            assert message in caplog.records[-1].getMessage() and "keeping version 1" in caplog.records[-1].getMessage()
            assert authz.active.version == 1 and authz.explain(ALPHA, "/x.Y/Z").decision.allowed, case
        rewrite(path, policy_doc({"allow_rules": [{"name": "all"}]}))
        wait_until(lambda: authz.active.version == 2, "a good policy after the refused ones did not load")
        assert failures(reader) == len(DENY_EVERYTHING)


@pytest.fixture
def deny_all_node(tmp_path: Path) -> Path:
    """A production node.toml (files identity) whose policy file denies every caller as spiffe://*."""
    snapshot = issue_snapshot(DevCA("example.org"), ALPHA)
    (tmp_path / "svid.pem").write_bytes(snapshot.chain_pem)
    (tmp_path / "key.pem").write_bytes(snapshot.key_pem)
    (tmp_path / "bundle.pem").write_bytes(snapshot.bundle_pem("example.org"))
    (tmp_path / "policy.json").write_text(policy_doc(DENY_EVERYTHING["principal spiffe://*"][0]))
    (tmp_path / "node.toml").write_text(
        '[node]\nname = "alpha"\nlisten = "127.0.0.1:0"\nmode = "production"\n\n'
        '[identity]\nsource = "files"\ntrust_domain = "example.org"\ncert = "svid.pem"\nkey = "key.pem"\n'
        'bundle = "bundle.pem"\n\n[authz]\npolicy = "policy.json"\n'
    )
    return tmp_path / "node.toml"


def meshnode(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPIFFE_ENDPOINT_SOCKET", "MESHNODE_MODE")}
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_meshnode_run_exits_2_for_a_policy_that_denies_everything(deny_all_node: Path) -> None:
    proc = meshnode("run", str(deny_all_node))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "deny rule 'd' matches every caller and every method" in proc.stderr
    assert "ready on" not in proc.stdout


def test_meshnode_check_reports_what_meshnode_run_would_refuse(deny_all_node: Path) -> None:
    proc = meshnode("check", str(deny_all_node))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = "[FAIL] policy can allow a call and leaves health open: authz: policy 'p': deny rule 'd' matches"
    assert failed in proc.stdout
    assert "result: NOT ready for production (1 of" in proc.stdout


def test_meshnode_policy_check_warns_about_a_policy_that_denies_everything(deny_all_node: Path) -> None:
    proc = meshnode("policy", "check", str(deny_all_node.parent / "policy.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a valid file: the node decides whether to run it
    assert "warning: production would refuse it: policy 'p': deny rule 'd' matches every caller" in proc.stderr
