"""The wheel, as a pip user gets it: built from the tree, installed with `[otlp]` into a fresh venv
outside the source tree, it runs `meshnode demo`, and a node exports spans with the peers'
SPIFFE IDs to a real OTLP/gRPC receiver (built on opentelemetry-proto's service definitions).

Needs PyPI (or pip's cache) for the dependencies, as `make test` does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import venv
import zipfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshnode.spiffeid import dns_name_for
from meshnode.testing import short_tmpdir
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
NODE_ID = "spiffe://example.org/node/alpha"
CALLER_ID = "spiffe://example.org/node/beta"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH to this tree, no meshnode or OTEL settings."""
    drop = ("PYTHONPATH", "MESHNODE_", "SPIFFE_", "OTEL_", "GRPC_", "VIRTUAL_ENV", "COVERAGE_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the sdist carries (the tree itself stays clean)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "meshnode", src / "meshnode", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                           "--wheel-dir", str(work / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600, cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("meshnode-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``meshnode[otlp]`` from the wheel; returns its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           f"{wheel}[otlp]"], capture_output=True, text=True, timeout=900, env=clean_env())
    if done.returncode != 0 and ("No matching distribution" in done.stderr or "Could not find" in done.stderr):
        pytest.skip(f"the dependencies are not installable here (no PyPI?): {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr
    return bin_dir


@pytest.mark.slow
def test_the_wheel_ships_stubs_protos_and_license_but_not_the_benchmark(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for shipped in ("meshnode/py.typed", "meshnode/demo/v1/demo_pb2.pyi", "meshnode/demo/v1/demo_pb2_grpc.pyi",
                    "meshnode/demo/v1/demo.proto", "meshnode/xds/v3/envoy.proto", "meshnode/xds/v3/envoy_pb2.pyi"):
        assert shipped in names
    assert [n for n in names if n.startswith("meshnode/bench/")] == []
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert not re.search(r"^Requires-Dist: xds-protos", metadata, re.M)


@pytest.mark.slow
def test_meshnode_demo_runs_from_the_installed_wheel(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(installed / "python"), "-c", "import meshnode.node; print(meshnode.node.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env())
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout  # not this source tree
    demo = subprocess.run([str(installed / "meshnode"), "demo", "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=clean_env())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "everything held" in demo.stdout
    bench = subprocess.run([str(installed / "meshnode"), "bench", "--quick"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env=clean_env())
    assert bench.returncode == 1
    assert bench.stderr.startswith("meshnode: bench: the benchmark is not in the installed package")


# -- OTLP ------------------------------------------------------------------------------------------


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """opentelemetry.proto.collector.trace.v1.TraceService on 127.0.0.1:0 (plaintext, as a local collector)."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[dict[str, str], str, dict[str, str]]]:
        """(resource attributes, span name, span attributes) of every span received, string values only."""
        def strings(attributes: Any) -> dict[str, str]:
            return {a.key: a.value.string_value for a in attributes if a.value.HasField("string_value")}

        with self.lock:
            return [(strings(rs.resource.attributes), span.name, strings(span.attributes))
                    for request in self.requests for rs in request.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.server.stop(0).wait()


@pytest.mark.slow
def test_a_node_from_the_wheel_exports_spans_with_peer_ids_over_otlp(installed: Path, tmp_path: Path,
                                                                     receiver: OtlpReceiver) -> None:
    sockets = short_tmpdir()
    (tmp_path / "agent.toml").write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{sockets}"\n'
        f'[[entries]]\nname = "alpha"\nspiffe_id = "{NODE_ID}"\n[[entries]]\nname = "beta"\nspiffe_id = "{CALLER_ID}"\n'
    )
    (tmp_path / "alpha.toml").write_text(
        '[node]\nname = "alpha"\nlisten = "127.0.0.1:0"\nservices = ["meshnode.demo:EchoService"]\n'
        f'[identity]\nsource = "workload-api"\nsocket = "unix://{sockets}/alpha.sock"\ntrust_domain = "example.org"\n'
        f'[authz]\nallow = ["{CALLER_ID}"]\n'
        f'[telemetry]\nexporter = "otlp"\notlp_endpoint = "http://127.0.0.1:{receiver.port}"\n'
        'metrics_exporter = "none"\n'
    )
    procs: list[subprocess.Popen[str]] = []
    try:
        agent = subprocess.Popen([str(installed / "meshnode"), "agent", "--config", "agent.toml"], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        procs.append(agent)
        assert agent.stdout is not None and "ready" in agent.stdout.readline()
        node = subprocess.Popen([str(installed / "meshnode"), "run", "alpha.toml"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        procs.append(node)
        assert node.stdout is not None
        ready = re.search(r"ready on (127\.0\.0\.1:\d+) ", node.stdout.readline())
        assert ready is not None, node.stderr.read() if node.stderr else ""
        # a call with beta's SVID: the health check `meshnode probe` makes, verifying alpha by its DNS SAN
        probe = subprocess.run([str(installed / "meshnode"), "probe", ready.group(1), "--socket",
                                f"unix://{sockets}/beta.sock", "--server-name", dns_name_for(NODE_ID)],
                               capture_output=True, text=True, timeout=60, env=clean_env())
        assert probe.returncode == 0, probe.stderr
        node.send_signal(signal.SIGTERM)  # a clean stop flushes the batch span processor
        assert node.wait(timeout=60) == 0, node.stderr.read() if node.stderr else ""

        def health_span() -> list[tuple[dict[str, str], str, dict[str, str]]]:
            return [s for s in receiver.spans() if s[1] == "/grpc.health.v1.Health/Check"]

        eventually(health_span, "the health check's server span to reach the OTLP receiver")
        ((resource, _, attributes),) = health_span()
        assert resource["service.name"] == "alpha"
        assert attributes["meshnode.peer.spiffe_id"] == CALLER_ID
        assert attributes["meshnode.local.spiffe_id"] == NODE_ID
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(sockets, ignore_errors=True)
