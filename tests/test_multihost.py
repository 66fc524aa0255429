"""Three nodes on three Linux network namespaces (hosts with their own addresses).

The Relay flow crosses all three; cutting one host's link gives the caller a
clear UNAVAILABLE within its deadline; restoring the link lets calls succeed
again without restarting anything.

Every node listens on the fixed PORT: each host is a network namespace with
a port space of its own, so nothing else can hold it (no pick-then-bind race).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from meshnode.config.node import node_config_from_dict
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.node import Node
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import short_tmpdir
from tests.support import netns

WHY_NOT = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.slow,
              pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

NAMES = ("alpha", "beta", "gamma")
PORT = 7000
CLIENT = "spiffe://example.org/demo/client"


def sid(name: str) -> str:
    return f"spiffe://example.org/node/{name}"


def write_node(d: Path, hosts: netns.Hosts, name: str, socket: str, allow: str, peer: str | None,
               verify: str) -> Path:
    lines = [
        "[node]", f'name = "{name}"', f'listen = "{hosts.address(name)}:{PORT}"',
        'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]',
        "keepalive = 1.0", "connect_timeout = 1.0", f'peer_verify = "{verify}"',
        "[identity]", 'source = "workload-api"', f'socket = "{socket}"', 'trust_domain = "example.org"',
        "[authz]", f'allow = ["{allow}"]',
    ]
    if peer:
        lines += [f"[peers.{peer}]", f'address = "{hosts.address(peer)}:{PORT}"', f'spiffe_id = "{sid(peer)}"']
    path = d / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def relay(stub: demo_pb2_grpc.RelayStub, timeout: float) -> demo_pb2.ForwardReply:
    return await stub.Forward(demo_pb2.ForwardRequest(text="hi", route=["beta", "gamma"]), timeout=timeout)


@pytest.mark.parametrize("verify", ["dns", "spiffe-id"])
async def test_relay_across_three_hosts_survives_a_cut_link(verify: str) -> None:
    d = short_tmpdir()
    agent_cfg = AgentConfig(
        trust_domain="example.org", socket_dir=d / "sockets", state_dir=d / "state",
        entries=(*(EntryConfig(n, parse_spiffe_id(sid(n))) for n in NAMES),
                 EntryConfig("client", parse_spiffe_id(CLIENT))),
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with netns.Hosts(NAMES) as hosts, DevAgentThread(agent_cfg) as agent:
            allow = {"alpha": CLIENT, "beta": sid("alpha"), "gamma": sid("beta")}
            peer = {"alpha": "beta", "beta": "gamma", "gamma": None}
            for name in NAMES:
                cfg = write_node(d, hosts, name, agent.socket_address(name), allow[name], peer[name], verify)
                log = open(d / f"{name}.log", "wb")
                procs.append(subprocess.Popen([*hosts.exec_prefix(name), sys.executable, "-m", "meshnode.cli",
                                               "run", str(cfg)], stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 30
            for name in NAMES:
                while f"node {name} ready" not in (d / f"{name}.log").read_text(errors="replace"):
                    assert time.monotonic() < deadline, (d / f"{name}.log").read_text()
                    await asyncio.sleep(0.1)
            source = WorkloadApiSource(agent.socket_address("client"), timeout=5)
            client_cfg = node_config_from_dict({
                # the client stays in dns mode: an xDS bootstrap is process-wide, and this is pytest's process
                "node": {"name": "client", "listen": "127.0.0.1:0", "keepalive": 1.0, "connect_timeout": 1.0,
                         "peer_verify": "dns"},
                "identity": {"source": "workload-api"},
                "peers": {"alpha": {"address": f"{hosts.address('alpha')}:{PORT}", "spiffe_id": sid("alpha")}},
            }, environ={})
            async with Node(client_cfg, source=source) as client:
                stub = client.stub("alpha", demo_pb2_grpc.RelayStub)
                reply = await relay(stub, 10)
                assert [(h.node, h.caller) for h in reply.hops] == [
                    ("alpha", CLIENT), ("beta", sid("alpha")), ("gamma", sid("beta"))]

                hosts.cut("gamma")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await relay(stub, 8.0)
                # UNAVAILABLE naming the cut hop, not DEADLINE_EXCEEDED: the failure reached the
                # caller before its deadline (gRPC reports an expired deadline as DEADLINE_EXCEEDED)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                assert "beta -> gamma" in info.value.details()

                hosts.restore("gamma")
                recover_by = time.monotonic() + 20
                while True:
                    try:
                        reply = await relay(stub, 5)
                        break
                    except grpc.aio.AioRpcError:
                        assert time.monotonic() < recover_by, "calls did not recover after the link came back"
                        await asyncio.sleep(0.5)
                assert [h.node for h in reply.hops] == ["alpha", "beta", "gamma"]
                assert all(p.poll() is None for p in procs), "no node was restarted"
            source.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)
