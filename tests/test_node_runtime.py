"""Nodes on the dev agent: rotation under load, health across agent loss,
PERMISSION_DENIED boot refusal, two `meshnode run` processes calling each other."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshnode.config.agent import AgentConfig, EntryConfig
from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.identity.agent import DevAgentThread
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509svid import load_pem_certs
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import free_port, short_tmpdir
from tests.support.nodes import node_config, peer
from tests.test_production_boot import startup_seconds

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
    """Echo that remembers which client certificate serials it saw."""

    def __init__(self) -> None:
        self.serials: dict[int, float] = {}

    async def Say(self, request, context):  # type: ignore[no-untyped-def]
        pem = context.auth_context()["x509_pem_cert"][0]
        self.serials.setdefault(load_pem_certs(pem, "peer")[0].serial_number, time.monotonic())
        return await super().Say(request, context)


@pytest.mark.slow
async def test_rotation_under_load_through_the_dev_agent(agent_dir: Path) -> None:
    """>= 10 SVID rotations incl. a CA rotation, unary and stream callers: zero failed RPCs."""
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

                tasks = [asyncio.ensure_future(unary()) for _ in range(3)] + [asyncio.ensure_future(stream())]
                rotations = 0
                pushed: list[tuple[int, float]] = []
                for i in range(11):
                    await asyncio.sleep(0.25)
                    if i == 5:
                        await asyncio.to_thread(agent.rotate_ca, activate_after=0.3)
                    else:
                        await asyncio.to_thread(agent.rotate_svids)
                    rotations += 1
                    pushed.append((agent.svid("alpha").chain[0].serial_number, time.monotonic()))
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*tasks)
        alpha_src.close()
        beta_src.close()
    assert failures == []
    assert rotations >= 10
    assert done["unary"] > 100 and done["stream"] > 3
    # new handshakes carry the new client certificates
    picked_up = [echo.serials[s] - t for s, t in pushed if s in echo.serials]
    assert len(picked_up) >= 8, (len(picked_up), len(pushed))


@pytest.mark.slow
async def test_health_follows_svid_expiry_and_recovery(agent_dir: Path) -> None:
    cfg = agent_config(agent_dir, ttl=4)
    agent = DevAgentThread(cfg).start()
    beta_src = WorkloadApiSource(agent.socket_address("beta"), timeout=5)
    async with Node(node_config("beta", allow=[ALPHA]), services=[EchoService()], source=beta_src) as beta:
        from meshnode.identity.devca import DevCA
        from meshnode.testing import issue_snapshot

        ca = DevCA("example.org", state_dir=agent_dir / "state")
        caller = issue_snapshot(ca, ALPHA)
        creds = channel_credentials(caller, "example.org")

        async def status() -> int:
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{beta.port}", creds,
                options=[("grpc.ssl_target_name_override", dns_name_for(BETA))],
            ) as ch:
                try:
                    r = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
                    return int(r.status)
                except grpc.aio.AioRpcError as err:
                    return -int(err.code().value[0])

        async def wait_status(want: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while (got := await status()) != want:
                assert time.monotonic() < deadline, f"health stayed {got}, wanted {want}"
                await asyncio.sleep(0.2)

        await wait_status(health_pb2.HealthCheckResponse.SERVING, 5)
        agent.close()  # the agent goes away; the node keeps serving on its SVID until it expires
        assert beta.serving
        # the server certificate itself expires too, so ask the node's own health state
        deadline = time.monotonic() + 8
        while beta.serving:
            assert time.monotonic() < deadline, "health never turned NOT_SERVING at expiry"
            await asyncio.sleep(0.1)
        assert beta.identity.expired()
        agent = DevAgentThread(cfg).start()  # same state_dir: same CA
        deadline = time.monotonic() + 12  # py-spiffe reconnects with backoff (capped at 5 s)
        while not beta.serving:
            assert time.monotonic() < deadline, "health did not come back after the agent returned"
            await asyncio.sleep(0.1)
        await wait_status(health_pb2.HealthCheckResponse.SERVING, 5)
    beta_src.close()
    agent.close()


def test_production_refuses_a_workload_without_registration_entry(agent_dir: Path, tmp_path: Path) -> None:
    with DevAgentThread(agent_config(agent_dir, uid=os.getuid() + 4242)) as agent:
        port = free_port()
        cfg = tmp_path / "node.toml"
        cfg.write_text(
            f'[node]\nname = "beta"\nlisten = "127.0.0.1:{port}"\nmode = "production"\n'
            f'[identity]\nsource = "workload-api"\nsocket = "{agent.socket_address("beta")}"\n'
            f'trust_domain = "example.org"\ntimeout = 2\n[authz]\nallow = ["{ALPHA}"]\n'
        )
        startup = startup_seconds()
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "run", str(cfg)],
                              capture_output=True, text=True, timeout=30)
        elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    assert "no registration entry" in proc.stderr and "PERMISSION_DENIED" in proc.stderr
    assert elapsed < 2 + 1 + startup * 1.5  # timeout + 1 s, plus interpreter start-up


@pytest.mark.slow
def test_two_meshnode_run_processes_call_each_other(agent_dir: Path, tmp_path: Path) -> None:
    """`meshnode run` twice on the dev agent; alpha relays to beta over mTLS."""
    procs: list[subprocess.Popen[str]] = []
    with DevAgentThread(agent_config(agent_dir)) as agent:
        ports = {"alpha": free_port(), "beta": free_port()}
        for name, other in (("alpha", "beta"), ("beta", "alpha")):
            (tmp_path / f"{name}.toml").write_text(
                f'[node]\nname = "{name}"\nlisten = "127.0.0.1:{ports[name]}"\n'
                f'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]\n'
                f'[identity]\nsource = "workload-api"\nsocket = "{agent.socket_address(name)}"\n'
                f'trust_domain = "example.org"\n[authz]\nallow = ["spiffe://example.org/node/{other}", '
                f'"spiffe://example.org/node/alpha"]\n'
                f'[peers.{other}]\naddress = "127.0.0.1:{ports[other]}"\n'
                f'spiffe_id = "spiffe://example.org/node/{other}"\nverify = "dns"\n'
            )
        try:
            for name in ("alpha", "beta"):
                p = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "run", str(tmp_path / f"{name}.toml")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                procs.append(p)
                assert p.stdout is not None
                line = p.stdout.readline()
                assert f"node {name} ready" in line, p.stderr.read() if p.poll() is not None else line
            from meshnode.identity.devca import DevCA
            from meshnode.testing import issue_snapshot

            caller = issue_snapshot(DevCA("example.org", state_dir=agent_dir / "state"), ALPHA)
            with grpc.secure_channel(
                f"127.0.0.1:{ports['alpha']}", channel_credentials(caller, "example.org"),
                options=[("grpc.ssl_target_name_override", dns_name_for(ALPHA))],
            ) as ch:
                reply = demo_pb2_grpc.RelayStub(ch).Forward(demo_pb2.ForwardRequest(text="hi", route=["beta"]),
                                                            timeout=10)
            assert [(h.node, h.spiffe_id, h.caller) for h in reply.hops] == [
                ("alpha", ALPHA, ALPHA),
                ("beta", BETA, ALPHA),
            ]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                assert p.wait(timeout=10) == 0
