"""`meshnode check` and `meshnode run` give the same verdict on every configuration.

Both run the node's one boot plan; check says what run would do. Each row
is a real config run through both commands as subprocesses: check's
prediction (starts, or refuses with exit N) must be what run does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.boot import boot
from meshnode.config.node import load_node_config
from meshnode.devagent.ca import DevCA
from meshnode.errors import ConfigError
from meshnode.testing import issue_snapshot
from tests.support.procs import ROOT, Ended, Meshnode

ID = "spiffe://example.org/node/alpha"
ALLOW = 'allow = ["spiffe://example.org/node/beta"]'
CATCH_ALL = {"name": "p", "deny_rules": [{"name": "all-out"}], "allow_rules": [{"name": "in"}]}
DENY_ONLY = {"name": "p", "deny_rules": [{"name": "x", "source": {"principals": ["spiffe://example.org/x"]}}]}
GREETER = "tests.support.services:Greeter"  # a NodeService with a class-level allow list

# name: (mode, [node] extra, [identity] body or "files", [authz] body, files to write)
ROWS: dict[str, tuple[str, str, str, str, dict[str, object]]] = {
    "production, files, allow list": ("production", "", "files", ALLOW, {}),
    "production, dev source": ("production", "", 'source = "dev"\ntrust_domain = "example.org"', ALLOW, {}),
    "production, no trust domain": ("production", "", "files-no-td", ALLOW, {}),
    "production, no policy at all": ("production", "", "files", "", {}),
    "production, catch-all deny rule": ("production", "", "files", 'policy = "p.json"', {"p.json": CATCH_ALL}),
    "production, deny rules only": ("production", "", "files", 'policy = "p.json"', {"p.json": DENY_ONLY}),
    "production, policy not JSON": ("production", "", "files", 'policy = "p.json"', {"p.json": "{nope"}),
    "development, policy not JSON": ("development", "", "files", 'policy = "p.json"', {"p.json": "{nope"}),
    "staging, catch-all deny rule": ("staging", "", "files", 'policy = "p.json"', {"p.json": CATCH_ALL}),
    "production, service allow list only": ("production", f'services = ["{GREETER}"]', "files", "", {}),
    "production, service that cannot load": ("production", 'services = ["tests.support.nowhere:X"]', "files",
                                             ALLOW, {}),
    "production, SVID of another trust domain": ("production", "", "files-other-td", ALLOW, {}),
    "production, SVID with another ID": ("production", "", "files-other-id", ALLOW, {}),
    "production, client only": ("production", "no-listen", "files", "", {}),
    "development, dev source, nothing else": ("development", "", 'source = "dev"', "", {}),
    "production, Workload API socket missing": (
        "production", "", 'source = "workload-api"\nsocket = "unix:///nonexistent/agent.sock"\n'
        'trust_domain = "example.org"\ntimeout = 1.0', ALLOW, {}),
    "staging, dev source": ("staging", "", 'source = "dev"\ntrust_domain = "example.org"', ALLOW, {}),
    "production, files, jwt required, no jwt_bundles_dir": ("production", "", "files", ALLOW + '\njwt = "required"',
                                                            {}),
    "production, files, jwt required, jwt_bundles_dir missing": ("production", "", "files-jwt-dir",
                                                                 ALLOW + '\njwt = "required"', {}),
}


def write_row(tmp: Path, row: tuple[str, str, str, str, dict[str, object]]) -> Path:
    mode, node_extra, identity, authz, files = row
    ca = DevCA("example.org")
    svid_id = "spiffe://example.org/node/other" if identity == "files-other-id" else ID
    if identity == "files-other-td":
        snap = issue_snapshot(DevCA("other.org"), "spiffe://other.org/node/alpha")
    else:
        snap = issue_snapshot(ca, svid_id)
    (tmp / "svid.pem").write_bytes(snap.chain_pem)
    (tmp / "key.pem").write_bytes(snap.key_pem)
    (tmp / "bundle.pem").write_bytes(snap.bundle_pem(snap.trust_domain))
    if identity.startswith("files"):
        body = 'source = "files"\ncert = "svid.pem"\nkey = "key.pem"\nbundle = "bundle.pem"\n'
        if identity != "files-no-td":
            body += 'trust_domain = "example.org"\n'
        if identity == "files-other-id":
            body += f'spiffe_id = "{ID}"\n'
        if identity == "files-jwt-dir":
            body += 'jwt_bundles_dir = "jwt-bundles"\n'
        identity = body
    listen = "" if node_extra == "no-listen" else 'listen = "127.0.0.1:0"\n'
    extra = "" if node_extra == "no-listen" else node_extra
    for name, content in files.items():
        (tmp / name).write_text(content if isinstance(content, str) else json.dumps(content))
    config = tmp / "node.toml"
    config.write_text(
        f'[node]\nname = "alpha"\n{listen}mode = "{mode}"\n{extra}\n[identity]\n{identity}\n[authz]\n{authz}\n'
    )
    return config


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MESHNODE_", "SPIFFE_", "OTEL_"))}


def what_run_does(config: Path) -> tuple[bool, int | None, str]:
    """(started, exit code when it refused, output)."""
    node = Meshnode(["run", str(config)], env=clean_env())
    try:
        try:
            node.wait_line(r"^meshnode: node alpha ready", timeout=60)
        except Ended:
            return False, node.proc.wait(timeout=30), node.output()
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=30) == 0, node.output()
        return True, None, node.output()
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(ROWS))
def test_check_predicts_what_run_does(row: str, tmp_path: Path) -> None:
    config = write_row(tmp_path, ROWS[row])
    checked = subprocess.run([sys.executable, "-m", "meshnode.cli", "check", "--json", str(config)],
                             capture_output=True, text=True, env=clean_env(), timeout=60, cwd=ROOT)
    if checked.returncode == 2:  # the config itself is invalid: run must say the same
        started, code, out = what_run_does(config)
        assert (started, code) == (False, 2), out
        return
    report = json.loads(checked.stdout)
    assert checked.returncode == (0 if report["ready_for_production"] else 1)
    started, code, out = what_run_does(config)
    assert report["run"]["starts"] == started, (report["run"], out)
    if not started:
        assert report["run"]["exit"] == code, (report["run"], out)
        assert report["run"]["error"].splitlines()[0][:60] in out, (report["run"], out)


def test_the_table_covers_both_verdicts_and_every_refusing_exit_code(tmp_path: Path) -> None:
    """The rows above are not all alike: some start, and refusals include exit 2 and 3."""
    outcomes: set[object] = set()
    cwd = Path.cwd()
    os.chdir(ROOT)  # services import from the repository root
    try:
        for i, row in enumerate(ROWS.values()):
            work = tmp_path / str(i)
            work.mkdir()
            try:
                config = load_node_config(write_row(work, row), environ={})
            except ConfigError:
                outcomes.add(2)
                continue
            with contextlib.closing(boot(config)) as booted:
                refused = booted.refusal()
                outcomes.add("starts" if refused is None else refused.error.exit_code)
    finally:
        os.chdir(cwd)
    assert outcomes == {"starts", 2, 3}
