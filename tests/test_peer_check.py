"""`meshnode check` lists each peer's endpoints as they resolve now, and how calls to it are made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.dns_server import DnsServer
from tests.support.procs import ROOT

BETA = "spiffe://example.org/node/beta"


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "check", *args, str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_check_lists_the_endpoints_of_every_peer(tmp_path: Path) -> None:
    with DnsServer() as down:
        stopped = down.authority("gamma.test", 7003)  # nobody answers there any more
    with DnsServer({"beta.test": ["127.0.0.2", "127.0.0.3"]}) as dns:
        config = tmp_path / "node.toml"
        config.write_text(
            '[node]\nname = "alpha"\n'
            f'[identity]\nsource = "dev"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[peers.beta]\naddress = "{dns.authority("beta.test", 7001)}"\nspiffe_id = "{BETA}"\n'
            f'[peers.delta]\naddresses = ["10.0.0.1:7004", "10.0.0.2:7004"]\nspiffe_id = "{BETA}"\n'
            'verify = "dns"\nretries = 0\ntimeout = 2.5\n'
            f'[peers.gamma]\naddress = "{stopped}"\nspiffe_id = "{BETA}"\n'
        )
        as_json = check(config, "--json")
        as_text = check(config)
    report = json.loads(as_json.stdout)
    peers = {p["name"]: p for p in report["peers"]}
    assert peers["beta"]["endpoints"] == ["127.0.0.2:7001", "127.0.0.3:7001"]
    assert (peers["beta"]["lb"], peers["beta"]["retries"], peers["beta"]["resolved_by"]) == (
        "round_robin", 2, "meshnode")
    assert peers["delta"]["endpoints"] == ["10.0.0.1:7004", "10.0.0.2:7004"]
    assert (peers["delta"]["retries"], peers["delta"]["timeout"], peers["delta"]["resolved_by"]) == (
        0, 2.5, "configuration")
    assert peers["gamma"]["endpoints"] is None and "resolver: " in peers["gamma"]["endpoints_error"]
    assert any("cannot resolve peer 'gamma'" in w for w in report["warnings"])
    assert "endpoints 2 now: 127.0.0.2:7001, 127.0.0.3:7001  (round_robin, 2 retries on UNAVAILABLE)" in \
        as_text.stdout, as_text.stdout
    assert "endpoints 2 now: 10.0.0.1:7004, 10.0.0.2:7004  (round_robin, no retries, timeout 2.5s)" in \
        as_text.stdout
    assert "endpoints cannot resolve now: resolver: " in as_text.stdout
