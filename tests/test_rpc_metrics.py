"""RPC metrics per identity through real mTLS, read as Prometheus reads them: over HTTP, parsed by
prometheus_client. Counts equal the calls made, per status code, method and peer; peer IDs past
[telemetry] max_peer_ids are "other"; a bad or busy metrics address stops the node before it serves."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.telemetry.rpcmetrics import MAX_METHODS, OTHER, RpcMetrics
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.metrics import CLIENT, ECHO, SERVER, Sample, label_values, scrape, value
from tests.support.nodes import node_config, peer
from tests.support.procs import Meshnode

TD = "spiffe://example.org/node/"
ALPHA, BETA, GAMMA = TD + "alpha", TD + "beta", TD + "gamma"
METRICS = {"telemetry": {"prometheus": "127.0.0.1:0"}}


def calls(samples: list[Sample], name: str, method: str, peer_id: str, code: int) -> float:
    return value(samples, f"{name}_count", rpc_system="grpc", rpc_service=ECHO, rpc_method=method,
                 meshnode_peer_spiffe_id=peer_id, rpc_grpc_status_code=str(code))


def decisions(samples: list[Sample], decision: str, method: str) -> float:
    return value(samples, "meshnode_authz_decisions_total", meshnode_authz_decision=decision, rpc_service=ECHO,
                 rpc_method=method, meshnode_authz_dry_run="false")


def assert_histograms_are_whole(samples: list[Sample], name: str) -> None:
    """Every series: buckets never shrink, +Inf equals the count, the sum is a duration."""
    counts = [s for s in samples if s.name == f"{name}_count"]
    assert counts
    for count in counts:
        key = dict(count.labels)
        buckets = sorted(
            (float(s.labels["le"]), s.value) for s in samples
            if s.name == f"{name}_bucket" and {k: v for k, v in s.labels.items() if k != "le"} == key
        )
        assert [n for _, n in buckets] == sorted(n for _, n in buckets)
        assert buckets[-1] == (float("inf"), count.value)
        assert value(samples, f"{name}_sum", **key) >= 0


async def test_a_scrape_counts_every_call_by_status_method_and_peer_on_both_sides() -> None:
    ca = DevCA("example.org")
    async with Node(node_config("beta", allow=[ALPHA], extra=METRICS), services=[EchoService()],
                    source=ManualSource(ca, BETA)) as beta:
        before = await asyncio.to_thread(scrape, beta.metrics_url)
        async with (
            Node(node_config("alpha", peers={"beta": peer(beta.port, BETA)}, extra=METRICS),
                 source=ManualSource(ca, ALPHA)) as alpha,
            Node(node_config("gamma", peers={"beta": peer(beta.port, BETA)}, extra=METRICS),
                 source=ManualSource(ca, GAMMA)) as gamma,
        ):
            allowed, refused = alpha.stub("beta", demo_pb2_grpc.EchoStub), gamma.stub("beta", demo_pb2_grpc.EchoStub)
            for _ in range(5):
                await allowed.Say(demo_pb2.SayRequest(text="hi"), timeout=10)
            for _ in range(2):
                assert len([r async for r in allowed.SayStream(demo_pb2.SayRequest(text="a b"), timeout=10)]) == 2
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await refused.Say(demo_pb2.SayRequest(text="hi"), timeout=10)
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                [r async for r in refused.SayStream(demo_pb2.SayRequest(text="a b"), timeout=10)]
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            server, alpha_side, gamma_side = await asyncio.gather(
                *(asyncio.to_thread(scrape, n.metrics_url) for n in (beta, alpha, gamma))
            )

    # the server: per method, caller and status code, denied calls included
    assert calls(server, SERVER, "Say", ALPHA, 0) == 5
    assert calls(server, SERVER, "SayStream", ALPHA, 0) == 2
    assert calls(server, SERVER, "Say", GAMMA, 7) == 3
    assert calls(server, SERVER, "SayStream", GAMMA, 7) == 1
    assert sum(s.value for s in server if s.name == f"{SERVER}_count") == 11  # nothing else
    assert_histograms_are_whole(server, SERVER)
    # the clients: per method, the server called and status code
    assert calls(alpha_side, CLIENT, "Say", BETA, 0) == 5
    assert calls(alpha_side, CLIENT, "SayStream", BETA, 0) == 2
    assert calls(gamma_side, CLIENT, "Say", BETA, 7) == 3
    assert calls(gamma_side, CLIENT, "SayStream", BETA, 7) == 1
    assert_histograms_are_whole(alpha_side, CLIENT)
    # decisions (counted per process, so compared with the scrape before the calls)
    for decision, method, made in (("allow", "Say", 5), ("allow", "SayStream", 2), ("deny", "Say", 3),
                                   ("deny", "SayStream", 1)):
        assert decisions(server, decision, method) - decisions(before, decision, method) == made
    # identity: the served SVID's remaining life, and the earliest CA expiry of its trust domain
    left = value(server, "meshnode_identity_seconds_to_expiry", meshnode_local_spiffe_id=BETA)
    assert 0 < left <= 3600
    ca_left = value(server, "meshnode_identity_bundle_seconds_to_expiry", meshnode_local_spiffe_id=BETA,
                    meshnode_bundle_trust_domain="example.org")
    assert ca_left > left
    assert value(server, "meshnode_node_info", node="beta", spiffe_id=BETA) == 1


async def test_a_rotation_is_counted_and_the_expiry_gauge_follows_the_served_certificate() -> None:
    ca = DevCA("example.org")
    source = ManualSource(ca, BETA)  # one hour
    async with Node(node_config("beta", allow=[ALPHA], extra=METRICS), services=[EchoService()],
                    source=source) as beta:
        before = await asyncio.to_thread(scrape, beta.metrics_url)
        source.set(issue_snapshot(ca, BETA, ttl=dt.timedelta(hours=3)))
        after = await asyncio.to_thread(scrape, beta.metrics_url)
    assert value(after, "meshnode_identity_rotations_total") - value(before, "meshnode_identity_rotations_total") == 1
    assert value(before, "meshnode_identity_seconds_to_expiry", meshnode_local_spiffe_id=BETA) <= 3600
    assert value(after, "meshnode_identity_seconds_to_expiry", meshnode_local_spiffe_id=BETA) > 2 * 3600


async def test_peer_ids_past_max_peer_ids_are_recorded_as_other() -> None:
    ca = DevCA("example.org")
    callers = [f"spiffe://example.org/caller/{n}" for n in range(5)]
    config = node_config("beta", allow=["spiffe://example.org/caller/*"],
                         extra={"telemetry": {"prometheus": "127.0.0.1:0", "max_peer_ids": 2}})
    async with Node(config, services=[EchoService()], source=ManualSource(ca, BETA)) as beta:
        for caller in callers:  # one after the other: the first two are the ones kept apart
            credentials = channel_credentials(issue_snapshot(ca, caller), "example.org")
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{beta.port}", credentials, options=[("grpc.ssl_target_name_override", dns_name_for(BETA))]
            ) as channel:
                await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=10)
        samples = await asyncio.to_thread(scrape, beta.metrics_url)
    assert label_values(samples, f"{SERVER}_count", "meshnode_peer_spiffe_id") == {callers[0], callers[1], OTHER}
    assert calls(samples, SERVER, "Say", OTHER, 0) == 3
    assert calls(samples, SERVER, "Say", callers[1], 0) == 1


def test_methods_past_the_cap_are_recorded_as_other() -> None:
    """A catch-all generic handler can be called with any path: those do not grow the series without bound."""
    metrics = RpcMetrics(max_peer_ids=1)
    for n in range(MAX_METHODS + 5):
        metrics.series("server", f"/made.Up/M{n}", ALPHA).record(0, 0.001)
    metrics.series("server", "/made.Up/M0", BETA).record(5, 0.001)  # a second peer: "other"
    views = metrics.views()
    assert len({(v.service, v.method) for v in views}) == MAX_METHODS + 1
    other = [v for v in views if v.method == OTHER]
    assert [(v.service, v.count) for v in other] == [(OTHER, 5)]
    [late_peer] = [v for v in views if v.code == 5]
    assert (late_peer.method, late_peer.peer) == ("M0", OTHER)


def node_toml(tmp_path: Path, prometheus: str) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nname = "beta"\nlisten = "127.0.0.1:0"\nservices = ["meshnode.demo:EchoService"]\n'
        f'[identity]\nsource = "dev"\ntrust_domain = "example.org"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[authz]\nallow = ["{ALPHA}"]\n[telemetry]\nprometheus = "{prometheus}"\n'
    )
    return config


@pytest.mark.slow
def test_a_busy_metrics_port_stops_the_node_before_it_serves_with_exit_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = node_toml(tmp_path, f"127.0.0.1:{port}")
        with Meshnode(["run", str(config)]) as node:
            code = node.proc.wait(timeout=60)
            out = node.output()
        assert code == 4, out
        assert "ready" not in out and "Traceback" not in out
        [line] = [line for line in out.splitlines() if line.startswith("meshnode: ")]  # one line: the error
        assert line == (f"meshnode: metrics: cannot serve Prometheus metrics on 127.0.0.1:{port}: the address is in "
                        "use; stop whatever uses it or change [telemetry] prometheus")
        check = subprocess.run([sys.executable, "-m", "meshnode.cli", "check", str(config)],
                               capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert f"[FAIL] metrics endpoint can listen (every mode): metrics: cannot serve Prometheus metrics on " \
           f"127.0.0.1:{port}: the address is in use" in check.stdout
    assert "run              would refuse to start (exit 4)" in check.stdout


@pytest.mark.parametrize(("prometheus", "message"), [
    ("9464", "'telemetry.prometheus' '9464' is not host:port"),
    ("127.0.0.1:70000", "'telemetry.prometheus' '127.0.0.1:70000' is not host:port: port 70000 is out of range"),
    ("192.0.2.1:9464", "metrics: cannot serve Prometheus metrics on 192.0.2.1:9464: Cannot assign requested address"),
])
def test_a_bad_metrics_address_is_one_line_and_exit_2(tmp_path: Path, prometheus: str, message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "meshnode.cli", "run", str(node_toml(tmp_path, prometheus))],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "ready" not in run.stdout and "Traceback" not in run.stderr
    [line] = [line for line in run.stderr.splitlines() if line.startswith("meshnode: ")]  # one line: the error
    assert message in line
