"""Connection floods against a node: handshake timeout, connection cap, open-file limit.

Real TCP and TLS over loopback; the flood is plain sockets that never send
a ClientHello (or send HTTP instead of TLS), the legitimate caller a real
mTLS client with a certificate of the node's CA.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshnode.config.node import node_config_from_dict
from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.errors import ConfigError
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, issue_snapshot, short_tmpdir
from tests.support.meshnode_run import ALPHA, BETA, NodeProcess, closed_by_peer, idle_connections, wait_closed
from tests.support.nodes import node_config

# -- [node] handshake_timeout and max_connections -----------------------------------------------


def config(**node: object) -> object:
    return node_config_from_dict({"node": {"name": "n", "listen": "127.0.0.1:0", **node}}, environ={})


def test_limits_have_safe_defaults_and_are_configurable() -> None:
    default = config()
    assert (default.handshake_timeout, default.max_connections) == (5.0, 2048)  # type: ignore[attr-defined]
    set_ = config(handshake_timeout=1.5, max_connections=10)
    assert (set_.handshake_timeout, set_.max_connections) == (1.5, 10)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("handshake_timeout", 0.0),
        ("handshake_timeout", -1),
        ("handshake_timeout", 301),
        ("handshake_timeout", math.nan),
        ("handshake_timeout", math.inf),
        ("handshake_timeout", True),
        ("max_connections", 0),
        ("max_connections", 2**21),
        ("max_connections", 2**63 - 1),
        ("max_connections", 10.5),
        ("max_connections", True),
    ],
)
def test_out_of_range_limits_are_refused_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config(**{key: value})
    assert f"'node.{key}' must be" in str(info.value)


# -- in-process node: the two gRPC core guards ---------------------------------------------------


@pytest.fixture
def beta_ca() -> DevCA:
    return DevCA("example.org")


def alpha_channel(ca: DevCA, port: int) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(issue_snapshot(ca, ALPHA), "example.org"),
        options=[("grpc.ssl_target_name_override", dns_name_for(BETA))],
    )


async def say(channel: grpc.aio.Channel, *, wait_for_ready: bool = False) -> str:
    reply = await demo_pb2_grpc.EchoStub(channel).Say(
        demo_pb2.SayRequest(text="hi"), timeout=30, wait_for_ready=wait_for_ready
    )
    return str(reply.caller)


async def test_an_idle_connection_is_closed_at_the_handshake_timeout(beta_ca: DevCA) -> None:
    """A connection that never sends a ClientHello is closed (gRPC's own default holds it 120 s)."""
    cfg = node_config("beta", allow=[ALPHA], extra={"node": {"handshake_timeout": 0.5}})
    async with Node(cfg, services=[EchoService()], source=ManualSource(beta_ca, BETA)) as beta:
        idle = await asyncio.to_thread(idle_connections, beta.port, 3)
        closed = await asyncio.gather(*(asyncio.to_thread(closed_by_peer, s, 60) for s in idle))
        for s in idle:
            s.close()
        async with alpha_channel(beta_ca, beta.port) as channel:
            assert await say(channel) == ALPHA  # real callers are not affected
    assert closed == [True, True, True]


@pytest.mark.slow
async def test_the_default_handshake_timeout_is_seconds_not_minutes(beta_ca: DevCA) -> None:
    cfg = node_config("beta", allow=[ALPHA])
    async with Node(cfg, services=[EchoService()], source=ManualSource(beta_ca, BETA)) as beta:
        [idle] = await asyncio.to_thread(idle_connections, beta.port, 1)
        closed = await asyncio.to_thread(closed_by_peer, idle, 60)
        idle.close()
    assert closed


async def test_connections_beyond_the_cap_are_shed_at_accept(beta_ca: DevCA) -> None:
    """Over max_connections, a connection is closed at once (before any TLS work); the others wait
    for the handshake timeout (60 s here, far away). A slot freed is usable by a real caller."""
    cfg = node_config("beta", allow=[ALPHA], extra={"node": {"handshake_timeout": 60.0, "max_connections": 8}})
    async with Node(cfg, services=[EchoService()], source=ManualSource(beta_ca, BETA)) as beta:
        idle = await asyncio.to_thread(idle_connections, beta.port, 20)

        shed = await asyncio.to_thread(wait_closed, idle, 12, 60)
        held = [s for s in idle if s not in shed]
        assert len(shed) == 12 and len(held) == 8
        assert not any(closed_by_peer(s, 0.01) for s in held)  # still held: the timeout is 60 s away
        async with alpha_channel(beta_ca, beta.port) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:  # the cap is full: shed too
                await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        held[0].close()  # one slot frees up
        async with alpha_channel(beta_ca, beta.port) as channel:
            assert await say(channel, wait_for_ready=True) == ALPHA
        for s in idle:
            s.close()


# -- `meshnode run` under an idle flood, with a low open-file limit ---------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = short_tmpdir("mn-dos-")
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    d.rmdir()


@pytest.mark.slow
def test_meshnode_run_serves_real_callers_through_an_idle_flood(workdir: Path) -> None:
    """Soft fd limit 256, cap 64, timeout 1 s, 400 idle connections (more than both): the node raised
    its fd limit, its established connection keeps working, every idle connection is closed, and a
    new caller gets through. Before: 1,100 idle connections were held ~120 s and with a 1024 fd limit
    every legitimate call failed."""
    node = NodeProcess(workdir, node_keys="max_connections = 64\nhandshake_timeout = 1.0", soft_nofile=256)
    try:
        soft, hard = node.fd_limits()
        assert soft == hard > 256
        assert re.search(r"open-file limit \(RLIMIT_NOFILE\) soft \d+ \(raised from 256\)", node.stderr())
        with node.channel() as established:
            stub = demo_pb2_grpc.EchoStub(established)
            assert stub.Say(demo_pb2.SayRequest(text="before"), timeout=10).caller == ALPHA
            idle = idle_connections(node.port, 400)
            during = [stub.Say(demo_pb2.SayRequest(text="during"), timeout=10).caller for _ in range(20)]
            assert during == [ALPHA] * 20
            still_open = [s for s in idle if not closed_by_peer(s, 60)]
            assert still_open == []
            for s in idle:
                s.close()
        with node.channel() as fresh:
            reply = demo_pb2_grpc.EchoStub(fresh).Say(demo_pb2.SayRequest(text="after"), timeout=30,
                                                      wait_for_ready=True)
            assert reply.caller == ALPHA
    finally:
        assert node.stop() == 0, node.stderr()
    assert "Traceback" not in node.stderr()
