"""``meshnode probe``: the exec readiness probe of deploy/kubernetes, as a real process.

It takes its SVID from a real Workload API (the dev agent, or a scripted
one serving a chain with an intermediate), calls grpc.health.v1 over mTLS
and answers with its exit status and one line on stderr. What a kubelet
sees: 0 only for SERVING.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshnode.spiffeid import dns_name_for
from meshnode.testing import short_tmpdir
from tests.support.agent_process import AgentProcess
from tests.support.pki import CA, Leaf
from tests.support.procs import listening_ports
from tests.support.scripted_workload_api import ScriptedWorkloadApi, x509_response
from tests.support.wait import eventually

NODE_ID = "spiffe://example.org/ns/meshnode/sa/alpha"
OTHER_ID = "spiffe://example.org/ns/meshnode/sa/beta"


def probe(*args: str, socket: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPIFFE_ENDPOINT_SOCKET", "GRPC_VERBOSITY", "GRPC_TRACE")}
    if socket is not None:
        env["SPIFFE_ENDPOINT_SOCKET"] = socket
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "probe", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshnode: probe: "), done.stderr
    return lines[0]


# -- against `meshnode run` on the dev agent ------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the node's address, its Workload API socket): `meshnode run` with the identity of the agent's entry."""
    work = tmp_path_factory.mktemp("probe")
    sockets = short_tmpdir()
    (work / "agent.toml").write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{sockets}"\n'
        f'[[entries]]\nname = "alpha"\nspiffe_id = "{NODE_ID}"\n'
        f'[[entries]]\nname = "beta"\nspiffe_id = "{OTHER_ID}"\n'
    )
    (work / "node.toml").write_text(
        '[node]\nname = "alpha"\nlisten = "127.0.0.1:0"\nmode = "production"\n'
        'services = ["meshnode.demo:EchoService"]\n'
        f'[identity]\nsource = "workload-api"\nsocket = "unix://{sockets}/alpha.sock"\ntrust_domain = "example.org"\n'
        f'[authz]\nallow = ["{OTHER_ID}"]\n'
    )
    agent = AgentProcess(work / "agent.toml")
    node = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "run", str(work / "node.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: node.poll() is None and listening_ports(node.pid), "the node to listen")
        (port,) = listening_ports(node.pid)
        yield f"127.0.0.1:{port}", f"unix://{sockets}"
    finally:
        node.terminate()
        node.wait(60)
        agent.stop()


@pytest.mark.slow
def test_a_serving_node_passes_the_probe_with_the_pods_own_svid(mesh: tuple[str, str]) -> None:
    address, sockets = mesh
    done = probe(address, socket=f"{sockets}/alpha.sock")
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.slow
def test_the_probe_verifies_the_server_by_its_own_identity(mesh: tuple[str, str]) -> None:
    """beta's SVID is valid in the trust domain, but the node at the address is not beta: refused."""
    address, sockets = mesh
    done = probe(address, socket=f"{sockets}/beta.sock")
    assert done.returncode == 1
    line = one_line(done)
    assert "UNAVAILABLE" in line and dns_name_for(OTHER_ID) in line


@pytest.mark.slow
def test_an_unknown_health_service_fails_the_probe(mesh: tuple[str, str]) -> None:
    address, sockets = mesh
    done = probe(address, "--service", "no.such.Service", socket=f"{sockets}/alpha.sock")
    assert done.returncode == 1
    assert one_line(done) == f"meshnode: probe: {address}: service 'no.such.Service' is SERVICE_UNKNOWN"


@pytest.mark.slow
def test_the_probe_loads_neither_cryptography_nor_opentelemetry_nor_py_spiffe(mesh: tuple[str, str]) -> None:
    address, sockets = mesh
    script = (
        "import json, sys\nfrom meshnode.cli import main\nstatus = main(['probe', sys.argv[1]])\n"
        "print(json.dumps(sorted(sys.modules)))\nsys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"{sockets}/alpha.sock"})
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in ("cryptography", "opentelemetry", "spiffe")
             or m in ("meshnode.node", "meshnode.server", "meshnode.boot", "meshnode.identity")]
    assert heavy == []


@pytest.mark.slow
@pytest.mark.report
def test_start_up_times_report(mesh: tuple[str, str]) -> None:
    """Wall and CPU time of `meshnode --help`, `--version` and `probe` (a SERVING node), medians of 15 runs."""
    address, sockets = mesh
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"{sockets}/alpha.sock"}
    commands = {"--help": ["--help"], "--version": ["--version"], "probe": ["probe", address]}
    print()
    for name, args in commands.items():
        walls, cpus = [], []
        for _ in range(15):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "meshnode.cli", *args], capture_output=True, env=env,
                                  timeout=60)
            walls.append(time.perf_counter() - began)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            assert done.returncode == 0, done.stderr
        print(f"  meshnode {name:<10} wall {statistics.median(walls) * 1000:6.1f} ms (max {max(walls) * 1000:6.1f})"
              f"  CPU {statistics.median(cpus) * 1000:6.1f} ms")


# -- against a plain gRPC health server and a scripted Workload API --------------------------------


class HealthServer:
    """A grpc mTLS server with only grpc.health.v1, serving ``leaf`` and asking for client certificates."""

    def __init__(self, root: CA, ca: CA, leaf: Leaf, status: int) -> None:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in ca.chain(leaf))
        key = leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        roots = root.cert.public_bytes(serialization.Encoding.PEM)
        self.servicer = health.HealthServicer()
        self.servicer.set("", status)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, self.server)
        creds = grpc.ssl_server_credentials([(key, pem)], root_certificates=roots, require_client_auth=True)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def close(self) -> None:
        self.server.stop(0).wait()


def pki() -> tuple[CA, CA]:
    root = CA.root("example.org")
    return root, root.intermediate("example.org")


@pytest.fixture
def api_dir() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def workload_api(path: Path, root: CA, issuer: CA, spiffe_id: str) -> ScriptedWorkloadApi:
    """The Workload API of the probe: an SVID signed by an intermediate (two certificates in x509_svid)."""
    leaf = issuer.leaf(spiffe_id, dns=[dns_name_for(spiffe_id)])
    return ScriptedWorkloadApi(path, x509_response(spiffe_id, issuer.chain(leaf), leaf.key, [root.cert]))


@pytest.mark.parametrize(
    ("status", "expected"),
    [(health_pb2.HealthCheckResponse.SERVING, 0), (health_pb2.HealthCheckResponse.NOT_SERVING, 1)],
)
def test_the_exit_status_follows_the_health_status(api_dir: Path, status: int, expected: int) -> None:
    root, issuer = pki()
    server = HealthServer(root, issuer, issuer.leaf(NODE_ID, dns=[dns_name_for(NODE_ID)]), status)
    try:
        with workload_api(api_dir / "agent.sock", root, issuer, NODE_ID) as api:
            done = probe(f"127.0.0.1:{server.port}", socket=api.address)
    finally:
        server.close()
    assert done.returncode == expected, done.stderr
    if expected:
        assert one_line(done) == f"meshnode: probe: 127.0.0.1:{server.port}: the node is NOT_SERVING"


def test_a_server_with_a_valid_svid_of_another_workload_is_refused(api_dir: Path) -> None:
    root, issuer = pki()
    server = HealthServer(root, issuer, issuer.leaf(OTHER_ID, dns=[dns_name_for(OTHER_ID)]),
                          health_pb2.HealthCheckResponse.SERVING)
    try:
        with workload_api(api_dir / "agent.sock", root, issuer, NODE_ID) as api:
            done = probe(f"127.0.0.1:{server.port}", socket=api.address)
    finally:
        server.close()
    assert done.returncode == 1
    assert dns_name_for(NODE_ID) in one_line(done)


def test_a_server_of_another_ca_is_refused(api_dir: Path) -> None:
    root, issuer = pki()
    stranger = CA.root("example.org", name="another example.org root")
    server = HealthServer(root, stranger, stranger.leaf(NODE_ID, dns=[dns_name_for(NODE_ID)]),
                          health_pb2.HealthCheckResponse.SERVING)
    try:
        with workload_api(api_dir / "agent.sock", root, issuer, NODE_ID) as api:
            done = probe(f"127.0.0.1:{server.port}", socket=api.address)
    finally:
        server.close()
    assert done.returncode == 1
    assert "UNAVAILABLE" in one_line(done)


def test_no_node_at_the_address_fails_with_one_line(api_dir: Path) -> None:
    root, issuer = pki()
    with workload_api(api_dir / "agent.sock", root, issuer, NODE_ID) as api:
        listener = HealthServer(root, issuer, issuer.leaf(NODE_ID), health_pb2.HealthCheckResponse.SERVING)
        port = listener.port
        listener.close()  # nothing listens there any more
        done = probe(f"127.0.0.1:{port}", "--timeout", "10", socket=api.address)
    assert done.returncode == 1
    assert "UNAVAILABLE" in one_line(done)


def test_without_an_identity_the_probe_says_so(api_dir: Path) -> None:
    missing = probe(socket=f"unix://{api_dir}/nothing.sock")
    assert missing.returncode == 3
    assert "does not exist" in one_line(missing)
    unset = probe(socket=None)
    assert unset.returncode == 2
    assert "SPIFFE_ENDPOINT_SOCKET" in one_line(unset)
    bad = probe("localhost", socket=f"unix://{api_dir}/nothing.sock")
    assert bad.returncode == 2
    assert "host:port" in one_line(bad)
