"""`meshnode check --warn-expiry DURATION`: exit 1 naming what expires sooner (the SVID, or a CA of a
named trust domain), exit 0 when nothing does; `check --json` gives every not_after. Durations read as
30s / 5m / 1h everywhere."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.config.duration import format_duration, parse_duration
from meshnode.config.node import node_config_from_dict
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import certs_pem
from meshnode.testing import issue_snapshot
from tests.support.pki import CA, from_now

BETA = "spiffe://example.org/node/beta"


def ready_config(tmp_path: Path) -> Path:
    """A node ready for production: SVID files (2 h left), its CA (a year), and a partner trust
    domain whose only CA expires in 5 h."""
    ca = DevCA("example.org", state_dir=tmp_path / "ca")
    snap = issue_snapshot(ca, BETA, ttl=dt.timedelta(hours=2))
    (tmp_path / "cert.pem").write_bytes(snap.chain_pem)
    (tmp_path / "key.pem").write_bytes(snap.key_pem)
    (tmp_path / "bundle.pem").write_bytes(snap.bundle_pem("example.org"))
    federated = tmp_path / "federated"
    federated.mkdir()
    partner = CA.root("partner.org", not_after=from_now(dt.timedelta(hours=5)))
    (federated / "partner.org.pem").write_bytes(certs_pem([partner.cert]))
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nname = "beta"\nlisten = "127.0.0.1:0"\nmode = "production"\nservices = ["meshnode.demo:EchoService"]\n'
        '[identity]\nsource = "files"\ncert = "cert.pem"\nkey = "key.pem"\nbundle = "bundle.pem"\n'
        'trust_domain = "example.org"\nfederates_with = ["partner.org"]\nfederated_bundles_dir = "federated"\n'
        '[authz]\nallow = ["spiffe://example.org/node/alpha"]\n'
    )
    return config


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "check", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_warn_expiry_passes_when_nothing_expires_within_the_window(tmp_path: Path) -> None:
    done = check(ready_config(tmp_path), "--warn-expiry", "90m")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ok] neither the SVID nor a bundle CA expires within 1h30m" in done.stdout
    assert "result: ready for production" in done.stdout


def test_warn_expiry_fails_naming_the_svid_then_the_ca_of_a_trust_domain(tmp_path: Path) -> None:
    config = ready_config(tmp_path)
    soon = check(config, "--warn-expiry", "3h")
    assert soon.returncode == 1
    assert f"[SOON] the SVID {BETA} expires" in soon.stdout
    assert "partner.org" not in "".join(line for line in soon.stdout.splitlines() if "[SOON]" in line)
    assert f"result: expires within 3h: the SVID {BETA} in " in soon.stdout
    later = check(config, "--warn-expiry", "24h")
    assert later.returncode == 1
    soon_lines = [line for line in later.stdout.splitlines() if "[SOON]" in line]
    assert len(soon_lines) == 2
    assert soon_lines[0].startswith(f"  [SOON] the SVID {BETA} expires")
    partner = "  [SOON] a CA of trust domain 'partner.org' (CN=partner.org root,O=meshnode tests)"
    assert soon_lines[1].startswith(partner)


def test_check_json_gives_the_not_after_of_the_svid_and_of_every_bundle_ca(tmp_path: Path) -> None:
    done = check(ready_config(tmp_path), "--json", "--warn-expiry", "3600s")
    report = json.loads(done.stdout)
    identity = report["identity"]
    svid_left = (dt.datetime.fromisoformat(identity["not_after"]) - dt.datetime.now(dt.UTC)).total_seconds()
    assert 3600 < svid_left <= 7200
    assert set(identity["bundles"]) == {"example.org", "partner.org"}
    [partner] = identity["bundles"]["partner.org"]
    partner_left = (dt.datetime.fromisoformat(partner["not_after"]) - dt.datetime.now(dt.UTC)).total_seconds()
    assert 4 * 3600 < partner_left <= 5 * 3600
    assert all(ca["not_after"] and ca["subject"] for cas in identity["bundles"].values() for ca in cas)
    assert report["expiry"] == {"window_seconds": 3600.0, "expiring": []}
    assert done.returncode == 0


@pytest.mark.parametrize("bad", ["soon", "-1h", "1h1h", ""])
def test_an_unparsable_warn_expiry_is_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    done = check(tmp_path / "node.toml", f"--warn-expiry={bad}")
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"meshnode: check: --warn-expiry {bad!r} ")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("2.5", 2.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("24h", 86400.0),
    ("90m", 5400.0), ("3600s", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1d", 86400.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "h", "1x", "-5s", "5 m", "30m1h", "1h1h", "inf", "nan", "1e3", "9" * 400])
def test_not_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_node_toml_durations_take_units() -> None:
    config = node_config_from_dict(
        {"node": {"name": "a", "keepalive": "30s", "shutdown_grace": "1m", "connect_timeout": "1.5s",
                  "max_connection_age": "1h", "handshake_timeout": "500ms"},
         "identity": {"source": "dev", "timeout": "5s", "svid_ttl": "2h"}},
        environ={},
    )
    assert (config.keepalive, config.shutdown_grace, config.connect_timeout, config.max_connection_age,
            config.handshake_timeout) == (30.0, 60.0, 1.5, 3600.0, 0.5)
    assert (config.identity.timeout, config.identity.svid_ttl) == (5.0, dt.timedelta(hours=2))
