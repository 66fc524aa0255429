"""``meshnode check --config-only``: the configuration, its services and policy, without an identity.

What CI and rendered manifests need (tests/test_kubernetes.py runs it on every node.toml in
deploy/kubernetes): a production config whose Workload API socket does not exist here passes, and
a config that `run` would refuse for a reason of its own fails, with the check that fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PRODUCTION = """\
[node]
name = "alpha"
listen = "0.0.0.0:7001"
mode = "production"
services = ["meshnode.demo:EchoService"]

[identity]
source = "workload-api"
socket = "unix:///nonexistent/spire-agent.sock"
trust_domain = "example.org"

[authz]
allow = ["spiffe://example.org/ns/meshnode/sa/beta"]
"""


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "check", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_a_production_config_passes_without_an_agent(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(PRODUCTION)
    done = check(config, "--config-only", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["config_only"] is True and report["identity"] is None
    assert report["services"] == ["meshnode.demo.v1.Echo"]
    assert [c["name"] for c in report["checks"] if not c["ok"]] == []
    text = check(config, "--config-only")
    assert text.returncode == 0
    assert "identity         not obtained (--config-only)" in text.stdout
    assert "result: configuration valid for production (0 of" in text.stdout
    # the full preflight does try the Workload API, and says it is not there
    full = check(config)
    assert full.returncode == 1
    assert "/nonexistent/spire-agent.sock" in full.stdout


@pytest.mark.parametrize(("change", "failing"), [
    (('services = ["meshnode.demo:EchoService"]', 'services = ["meshnode.demo:NoSuchService"]'), "services load"),
    (('source = "workload-api"', 'source = "dev"'), "identity source is a production source"),
    (('allow = ["spiffe://example.org/ns/meshnode/sa/beta"]', 'policy = "missing.json"'), "policy is valid"),
])
def test_a_config_run_would_refuse_fails_with_its_check(tmp_path: Path, change: tuple[str, str],
                                                         failing: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(PRODUCTION.replace(*change))
    done = check(config, "--config-only", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert [c["name"] for c in json.loads(done.stdout)["checks"] if not c["ok"]] == [failing]


def test_an_invalid_config_and_a_useless_socket_are_usage_errors(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(PRODUCTION.replace('mode = "production"', 'mode = "prod"'))
    done = check(config, "--config-only")
    assert done.returncode == 2
    assert done.stderr.startswith("meshnode: ") and "mode" in done.stderr
    config.write_text(PRODUCTION)
    both = check(config, "--config-only", "--socket", "unix:///x.sock")
    assert both.returncode == 2
    assert "--socket has no use with --config-only" in both.stderr
