"""The curated public API is pinned: adding or removing a name is a decision."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import meshnode

EXPECTED = {
    "AlreadyStartedError", "Authorizer", "AuthzInterceptor", "ClosedError", "ConfigError", "IdentityError",
    "IdentitySnapshot", "IdentitySource", "IdentityUnavailableError", "InvalidIdentityError", "InvalidSpiffeIdError",
    "JwtSvidError", "LifecycleError", "MeshnodeError", "Node", "NodeConfig", "NodeService", "NoPeerIdentityError",
    "NotStartedError",
    "PeerChannel", "PeerConfig", "PeerError", "Policy", "PolicyError", "ServeError", "SpiffeID", "StaticSource",
    "__version__", "dns_name_for", "load_node_config", "only", "parse_spiffe_id", "peer_id",
    "peer_jwt", "peer_mtls_id",
}  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent


def test_exported_names_are_pinned() -> None:
    assert set(meshnode.__all__) == EXPECTED
    for name in meshnode.__all__:
        assert hasattr(meshnode, name), name


def test_every_error_is_a_meshnode_error() -> None:
    for name in meshnode.__all__:
        obj = getattr(meshnode, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, meshnode.MeshnodeError), name


def test_version_matches_the_package_metadata() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["version"] == meshnode.__version__


def test_py_typed_is_shipped_and_the_cli_entry_point_resolves() -> None:
    assert (ROOT / "meshnode" / "py.typed").exists()
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("agent", "svid", "run", "check", "policy", "trace", "demo", "dns-name"):
        assert command in proc.stdout
