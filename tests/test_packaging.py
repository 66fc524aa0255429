"""Packaging promises: the generated code (demo stubs, the xDS messages) loads on the lowest
grpcio/protobuf that pyproject.toml allows, and no dependency installs other packages' files.

The wheel itself, installed in a fresh venv, is tested in tests/test_wheel.py."""

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
    gen = tmp_path / "gen"
    for package, names in (("demo/v1", ("demo_pb2.py", "demo_pb2_grpc.py")), ("xds/v3", ("envoy_pb2.py",))):
        pkg = gen / "meshnode" / package
        pkg.mkdir(parents=True)
        for name in names:
            shutil.copy(ROOT / "meshnode" / package / name, pkg / name)
    for init in ("meshnode", "meshnode/demo", "meshnode/demo/v1", "meshnode/xds", "meshnode/xds/v3"):
        (gen / init / "__init__.py").write_text("")
    check = subprocess.run(
        [str(python), "-W", "error", "-c",
         "import grpc, google.protobuf as pb; from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc; "
         "from meshnode.xds.v3 import envoy_pb2; "
         "print(grpc.__version__, pb.__version__, demo_pb2.SayRequest(text='x').text, "
         "envoy_pb2.Cluster(name='y').name)"],
        cwd=gen, capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[2:] == ["x", "y"]


def test_no_dependency_ships_a_copy_of_the_envoy_api() -> None:
    """xds-protos installed its own copy of opentelemetry/proto over opentelemetry-proto's
    (grpc/grpc#42926), so `pip install 'meshnode[otlp]'` gave an exporter that could not import.
    meshnode generates the few xDS messages it needs into meshnode/xds/v3 instead."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    every = [*data["project"]["dependencies"], *(d for ds in data["project"]["optional-dependencies"].values()
                                                 for d in ds)]
    assert [d for d in every if d.lower().startswith(("xds-protos", "xds_protos"))] == []
    # running the control plane's code loads none of it
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from meshnode.xds import resources, ads; "
         "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'envoy', 'udpa', 'xds', 'validate'}))"],
        capture_output=True, text=True, timeout=60,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "[]"), proc.stderr
