"""Packaging promises: the generated stubs load on the lowest grpcio/protobuf that
pyproject.toml allows, and the OTLP exporter imports next to xds-protos."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lower_bounds() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {d.split(">=")[0]: d.split(">=")[1].split(",")[0] for d in data["project"]["dependencies"] if ">=" in d}


@pytest.mark.slow
def test_generated_stubs_load_on_the_lowest_allowed_grpcio_and_protobuf(tmp_path: Path) -> None:
    bounds = lower_bounds()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"grpcio=={bounds['grpcio']}.0" if bounds["grpcio"].count(".") == 1 else f"grpcio=={bounds['grpcio']}",
         f"protobuf=={bounds['protobuf']}"],
        capture_output=True, text=True, timeout=300,
    )
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"the lowest versions are not installable here: {install.stderr.strip()[-200:]}")
    assert install.returncode == 0, install.stderr
    pkg = tmp_path / "gen" / "meshnode" / "demo" / "v1"
    pkg.mkdir(parents=True)
    for parent in (tmp_path / "gen" / "meshnode", tmp_path / "gen" / "meshnode" / "demo", pkg):
        (parent / "__init__.py").write_text("")
    for name in ("demo_pb2.py", "demo_pb2_grpc.py"):
        shutil.copy(ROOT / "meshnode" / "demo" / "v1" / name, pkg / name)
    check = subprocess.run(
        [str(python), "-W", "error", "-c",
         "import grpc, google.protobuf as pb; from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc; "
         "print(grpc.__version__, pb.__version__, demo_pb2.SayRequest(text='x').text)"],
        cwd=tmp_path / "gen", capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[2] == "x"


def test_otlp_exporter_imports_next_to_xds_protos() -> None:
    """xds-protos overwrites opentelemetry-proto's files (grpc/grpc#42926); the Makefile restores them."""
    proc = subprocess.run(
        [sys.executable, "-c",
         "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter; "
         "from envoy.service.discovery.v3 import ads_pb2_grpc; print('ok')"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
