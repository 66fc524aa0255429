"""Nodes on the dev agent: rotation under load, health across agent loss,
PERMISSION_DENIED boot refusal, two `meshnode run` processes calling each other."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509svid import load_pem_certs
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import short_tmpdir
from tests.support.nodes import node_config, peer
from tests.support.procs import Meshnode
from tests.support.wait import eventually_async

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


def agent_config(d: Path, *, ttl: int = 3600, uid: int | None = None) -> AgentConfig:
    return AgentConfig(
        trust_domain="example.org",
        socket_dir=d / "sockets",
        state_dir=d / "state",
        svid_ttl=ttl,
        entries=(
            EntryConfig("alpha", parse_spiffe_id(ALPHA)),
            EntryConfig("beta", parse_spiffe_id(BETA), uid=uid),
        ),
    )


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


class SerialEcho(EchoService):
    """Echo that remembers the serial of every client certificate it saw."""

    def __init__(self) -> None:
        self.serials: set[int] = set()

    async def Say(self, request, context):  # type: ignore[no-untyped-def]
        pem = context.auth_context()["x509_pem_cert"][0]
        self.serials.add(load_pem_certs(pem, "peer")[0].serial_number)
        return await super().Say(request, context)


@pytest.mark.slow
async def test_rotation_under_load_through_the_dev_agent(agent_dir: Path) -> None:
    """Ten SVID rotations, one across a CA rotation, under unary and stream load: each new
    client SVID reaches the server on a new handshake, the load runs on each, no call fails."""
    with DevAgentThread(agent_config(agent_dir)) as agent:
        beta_src = WorkloadApiSource(agent.socket_address("beta"), timeout=5)
        alpha_src = WorkloadApiSource(agent.socket_address("alpha"), timeout=5)
        echo = SerialEcho()
        async with Node(node_config("beta", allow=[ALPHA]), services=[echo], source=beta_src) as beta:
            cfg = node_config("alpha", peers={"beta": peer(beta.port, BETA)})
            async with Node(cfg, source=alpha_src) as alpha:
                stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)
                failures: list[BaseException] = []
                done = {"unary": 0, "stream": 0}
                stop = asyncio.Event()

                async def unary() -> None:
                    while not stop.is_set():
                        try:
                            r = await stub.Say(demo_pb2.SayRequest(text="x"), timeout=5)
                            assert r.caller == ALPHA and r.server == BETA
                            done["unary"] += 1
                        except Exception as exc:
                            failures.append(exc)

                async def stream() -> None:
                    while not stop.is_set():
                        try:
                            words = [r.text async for r in stub.SayStream(
                                demo_pb2.SayRequest(text=" ".join(["w"] * 200)), timeout=10)]
                            assert len(words) == 200
                            done["stream"] += 1
                        except Exception as exc:
                            failures.append(exc)

                async def load_ran() -> None:
                    """Wait until calls of both kinds completed after this point."""
                    since = dict(done)
                    await eventually_async(lambda: all(done[k] > since[k] for k in done), "unary and stream calls")

                tasks = [asyncio.ensure_future(unary()) for _ in range(3)] + [asyncio.ensure_future(stream())]
                try:
                    await load_ran()
                    for i in range(10):
                        if i == 5:  # the next CA is pushed in every bundle before it signs anything
                            await asyncio.to_thread(agent.rotate_ca, activate_after=1.0)
                        else:
                            await asyncio.to_thread(agent.rotate_svids)
                        serial = agent.svid("alpha").chain[0].serial_number
                        await eventually_async(lambda: serial in echo.serials,  # noqa: B023 (awaited here)
                                               f"rotation {i}: beta to see alpha's new SVID (serial {serial:x})")
                        await load_ran()
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
        alpha_src.close()
        beta_src.close()
    assert failures == []


@pytest.mark.slow
async def test_health_follows_svid_expiry_and_recovery(agent_dir: Path) -> None:
    cfg = agent_config(agent_dir, ttl=4)
    agents = [DevAgentThread(cfg).start()]
    beta_src = WorkloadApiSource(agents[0].socket_address("beta"), timeout=5)
    try:
        async with Node(node_config("beta", allow=[ALPHA]), services=[EchoService()], source=beta_src) as beta:
            from meshnode.devagent.ca import DevCA
            from meshnode.testing import issue_snapshot

            ca = DevCA("example.org", state_dir=agent_dir / "state")
            caller = issue_snapshot(ca, ALPHA)
            creds = channel_credentials(caller, "example.org")

            async def serving() -> bool:
                async with grpc.aio.secure_channel(
                    f"127.0.0.1:{beta.port}", creds,
                    options=[("grpc.ssl_target_name_override", dns_name_for(BETA))],
                ) as ch:
                    try:
                        r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
                    except grpc.aio.AioRpcError:
                        return False
                    return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

            await eventually_async(serving, "the health service to answer SERVING", step=0.2)
            agents[0].close()  # the agent goes away; the node keeps serving on its SVID until it expires
            assert beta.serving
            # the server certificate itself expires too, so ask the node's own health state
            await eventually_async(lambda: not beta.serving, "health to turn NOT_SERVING at expiry", step=0.1)
            assert beta.identity.expired()
            agents.append(DevAgentThread(cfg).start())  # same state_dir: same CA
            # py-spiffe reconnects with backoff (capped at 5 s)
            await eventually_async(lambda: beta.serving, "health to come back after the agent returned", step=0.1)
            await eventually_async(serving, "the health service to answer SERVING again", step=0.2)
    finally:
        beta_src.close()
        for agent in agents:
            agent.close()


@pytest.mark.slow
def test_production_refuses_a_workload_without_registration_entry(agent_dir: Path, tmp_path: Path) -> None:
    """Exit 3 naming the cause, and never ready. (How soon: the [identity] timeout of 2 s; the
    subprocess timeout only catches a hang.)"""
    with DevAgentThread(agent_config(agent_dir, uid=os.getuid() + 4242)) as agent:
        cfg = tmp_path / "node.toml"
        cfg.write_text(
            f'[node]\nname = "beta"\nlisten = "127.0.0.1:0"\nmode = "production"\n'
            f'[identity]\nsource = "workload-api"\nsocket = "{agent.socket_address("beta")}"\n'
            f'trust_domain = "example.org"\ntimeout = 2\n[authz]\nallow = ["{ALPHA}"]\n'
        )
        proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "run", str(cfg)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "no registration entry" in proc.stderr and "PERMISSION_DENIED" in proc.stderr
    assert "ready on" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_meshnode_run_processes_call_each_other(agent_dir: Path, tmp_path: Path) -> None:
    """`meshnode run` twice on the dev agent; alpha relays to beta over mTLS.

    Both listen on port 0: beta starts first, and alpha is configured with the port beta's
    ready line names."""

    def write(name: str, allow: list[str], peers: dict[str, int]) -> Path:
        text = (
            f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\n'
            f'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]\n'
            f'[identity]\nsource = "workload-api"\nsocket = "{agent.socket_address(name)}"\n'
            f'trust_domain = "example.org"\n[authz]\nallow = {json.dumps(allow)}\n'
        )
        for other, port in peers.items():
            text += (f'[peers.{other}]\naddress = "127.0.0.1:{port}"\n'
                     f'spiffe_id = "spiffe://example.org/node/{other}"\nverify = "dns"\n')
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    with DevAgentThread(agent_config(agent_dir)) as agent, contextlib.ExitStack() as running:
        beta = running.enter_context(Meshnode(["run", str(write("beta", [ALPHA], {}))]))
        beta_port = beta.ready("beta")
        alpha = running.enter_context(Meshnode(["run", str(write("alpha", [ALPHA], {"beta": beta_port}))]))
        alpha_port = alpha.ready("alpha")
        from meshnode.devagent.ca import DevCA
        from meshnode.testing import issue_snapshot

        caller = issue_snapshot(DevCA("example.org", state_dir=agent_dir / "state"), ALPHA)
        with grpc.secure_channel(
            f"127.0.0.1:{alpha_port}", channel_credentials(caller, "example.org"),
            options=[("grpc.ssl_target_name_override", dns_name_for(ALPHA))],
        ) as ch:
            reply = demo_pb2_grpc.RelayStub(ch).Forward(demo_pb2.ForwardRequest(text="hi", route=["beta"]),
                                                        timeout=10)
        assert [(h.node, h.spiffe_id, h.caller) for h in reply.hops] == [
            ("alpha", ALPHA, ALPHA),
            ("beta", BETA, ALPHA),
        ]
        for node in (alpha, beta):  # a clean stop on SIGTERM (the ExitStack only kills what is left)
            assert node.terminate() == 0, node.output()
