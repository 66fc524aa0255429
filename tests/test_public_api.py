"""The curated public API is pinned: adding or removing a name is a decision."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import meshnode

EXPECTED = {
    "Authorizer", "AuthzInterceptor", "ClosedError", "ConfigError", "IdentityError", "IdentitySnapshot",
    "IdentitySource", "IdentityUnavailableError", "InvalidIdentityError", "InvalidSpiffeIdError",
    "MeshnodeError", "Node", "NodeConfig", "NodeService", "NoPeerIdentityError", "PeerChannel", "PeerConfig",
    "PeerError", "Policy", "PolicyError", "ServeError", "SpiffeID", "StaticSource", "__version__",
    "dns_name_for", "load_node_config", "only", "parse_spiffe_id", "peer_id",
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


def test_generated_code_loads_on_the_lowest_versions_we_allow() -> None:
    """The demo stubs were generated for grpcio/protobuf lower bounds in pyproject.toml."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = {d.split(">=")[0]: d.split(">=")[1].split(",")[0] for d in data["project"]["dependencies"] if ">=" in d}
    grpc_text = (ROOT / "meshnode/demo/v1/demo_pb2_grpc.py").read_text()
    pb_text = (ROOT / "meshnode/demo/v1/demo_pb2.py").read_text()
    generated = grpc_text.split("GRPC_GENERATED_VERSION = '")[1].split("'")[0]
    assert tuple(map(int, generated.split("."))) <= tuple(map(int, (deps["grpcio"] + ".0").split(".")[:3]))
    protoc = pb_text.split("# Protobuf Python Version: ")[1].split()[0]
    assert tuple(map(int, protoc.split("."))) <= tuple(map(int, deps["protobuf"].split(".")))


def test_py_typed_is_shipped_and_the_cli_entry_point_resolves() -> None:
    assert (ROOT / "meshnode" / "py.typed").exists()
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("agent", "svid", "run", "check", "policy", "trace", "demo", "dns-name"):
        assert command in proc.stdout
