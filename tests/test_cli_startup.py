"""The command line starts without loading what its command does not need.

``meshnode --help`` is a new user's first command and ``meshnode probe`` runs
in exec probes every few seconds, so importing :mod:`meshnode.cli` and
building its parser must not load grpc (whose import brings its aio server),
OpenTelemetry's SDK or cryptography's x509: each command loads those when it
runs. (Start-up times are reported, not asserted, by
``tests/test_cli_probe.py::test_start_up_times_report``.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import meshnode
from meshnode.cli import COMMANDS

HEAVY = ("grpc", "grpc.aio._server", "opentelemetry.sdk", "cryptography.x509", "spiffe", "meshnode.node")


def loaded_after(code: str) -> list[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "import meshnode.cli; meshnode.cli.build_parser()",
    "import meshnode",
    "from meshnode import MeshnodeError, SpiffeID, parse_spiffe_id",
])
def test_importing_the_cli_loads_no_grpc_otel_sdk_or_x509(code: str) -> None:
    loaded = loaded_after(code)
    assert [m for m in HEAVY if m in loaded] == []


def test_a_public_name_still_resolves_on_first_use() -> None:
    loaded = loaded_after("import meshnode; assert meshnode.Node.__name__ == 'Node'")
    assert "meshnode.node" in loaded
    assert sorted(meshnode._LAZY) == sorted(set(meshnode.__all__) - {"__version__"})
    assert set(meshnode.__all__) <= set(dir(meshnode))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        meshnode.Nope  # noqa: B018


def test_version_prints_the_package_version() -> None:
    done = subprocess.run([sys.executable, "-m", "meshnode.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"meshnode {meshnode.__version__}\n", "")


def test_every_command_has_help() -> None:
    top = subprocess.run([sys.executable, "-m", "meshnode.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
        done = subprocess.run([sys.executable, "-m", "meshnode.cli", command, "--help"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        assert f"usage: meshnode {command}" in done.stdout
