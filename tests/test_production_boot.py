"""Production refuses to boot without an identity: exit codes, messages, never ready.

Nodes listen on port 0 (no port is picked ahead); a refused node never prints its ready line.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.testing import short_tmpdir

MESHNODE = [sys.executable, "-m", "meshnode.cli"]


def write_config(path: Path, identity: str, authz: str = 'allow = ["spiffe://example.org/x"]', port: int = 0) -> Path:
    path.write_text(
        f"""
[node]
name = "alpha"
listen = "127.0.0.1:{port}"
mode = "production"

[identity]
{identity}

[authz]
{authz}
"""
    )
    return path


def run_node(config: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Exit status and output of `meshnode run`; the timeout only catches a hang."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("SPIFFE_ENDPOINT_SOCKET", "MESHNODE_MODE")}
    full_env.update(env or {})
    proc = subprocess.run([*MESHNODE, "run", str(config)], capture_output=True, text=True, env=full_env,
                          timeout=60)
    return proc.returncode, proc.stderr + proc.stdout


def never_ready(out: str) -> bool:
    return "ready on" not in out


def test_no_socket_configured_exits_3_and_says_what_to_set(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "n.toml", 'source = "workload-api"\ntrust_domain = "example.org"\ntimeout = 1')
    code, out = run_node(cfg)
    assert code == 3, out
    assert "SPIFFE_ENDPOINT_SOCKET" in out and "[identity] socket" in out
    assert out.count("\n") <= 3  # one clear message, not a traceback
    assert never_ready(out)


def test_missing_socket_file_exits_3_naming_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "nope.sock"
    cfg = write_config(tmp_path / "n.toml",
                       f'source = "workload-api"\ntrust_domain = "example.org"\nsocket = "unix://{sock}"\ntimeout = 1')
    code, out = run_node(cfg)
    assert code == 3, out
    assert str(sock) in out and "does not exist" in out
    assert "start the SPIRE agent" in out
    assert never_ready(out)


@pytest.mark.slow
def test_silent_socket_exits_3_after_the_identity_timeout(tmp_path: Path) -> None:
    d = short_tmpdir()
    sock_path = d / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(sock_path))  # bound, never listening: connections are refused
    try:
        cfg = write_config(tmp_path / "n.toml",
                           f'source = "workload-api"\ntrust_domain = "example.org"\n'
                           f'socket = "unix://{sock_path}"\ntimeout = 2')
        code, out = run_node(cfg)
    finally:
        silent.close()
    assert code == 3, out
    assert str(sock_path) in out and "within 2 s" in out
    assert never_ready(out)


def test_dev_source_is_refused_in_production(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "n.toml", 'source = "dev"\ntrust_domain = "example.org"')
    code, out = run_node(cfg)
    assert code == 2, out
    assert 'source = "dev"' in out or "production source" in out
    assert never_ready(out)


def test_missing_authorization_policy_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "n.toml", 'source = "dev"\ntrust_domain = "example.org"', authz="")
    code, out = run_node(cfg)
    assert code == 2, out
    assert "authorization policy" in out


def test_files_source_with_expired_svid_exits_3(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    from meshnode.devagent.ca import DevCA
    from meshnode.identity.snapshot import certs_pem

    ca = DevCA("example.org")
    old = ca.issue("spiffe://example.org/alpha", dt.timedelta(seconds=-10))
    (tmp_path / "svid.pem").write_bytes(certs_pem(old.chain))
    (tmp_path / "key.pem").write_bytes(old.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "bundle.pem").write_bytes(certs_pem(ca.bundle))
    cfg = write_config(tmp_path / "n.toml",
                       'source = "files"\ntrust_domain = "example.org"\ncert = "svid.pem"\nkey = "key.pem"\n'
                       'bundle = "bundle.pem"')
    code, out = run_node(cfg)
    assert code == 3, out
    assert "outside its validity" in out
    assert "PRIVATE KEY" not in out
    assert never_ready(out)


def test_files_source_in_the_wrong_trust_domain_exits_3(tmp_path: Path) -> None:
    from meshnode.devagent.ca import DevCA
    from meshnode.testing import issue_snapshot

    snap = issue_snapshot(DevCA("other.org"), "spiffe://other.org/alpha")
    (tmp_path / "svid.pem").write_bytes(snap.chain_pem)
    (tmp_path / "key.pem").write_bytes(snap.key_pem)
    (tmp_path / "bundle.pem").write_bytes(snap.bundle_pem("other.org"))
    cfg = write_config(tmp_path / "n.toml",
                       'source = "files"\ntrust_domain = "example.org"\ncert = "svid.pem"\nkey = "key.pem"\n'
                       'bundle = "bundle.pem"')
    code, out = run_node(cfg)
    assert code == 3, out
    assert "trust domain" in out and "other.org" in out
    assert never_ready(out)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("[node\nname='a'", 2, "not valid TOML"),
        ("[node]\nname='a'\nlisten='127.0.0.1:1'\ncolour='red'\n", 2, "'node.colour' is not a known key"),
    ],
)
def test_invalid_config_exits_2(tmp_path: Path, text: str, code: int, message: str) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(text)
    got, out = run_node(cfg)
    assert got == code, out
    assert message in out


def test_port_in_use_exits_4(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "n.toml", 'source = "dev"\ntrust_domain = "example.org"', port=port)
        code, out = run_node(cfg, env={"MESHNODE_MODE": "development"})
    assert code == 4, out
    assert f"127.0.0.1:{port}" in out and "in use" in out
