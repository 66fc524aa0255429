"""`meshnode top --once` against running nodes: both nodes, their methods and callers, calls, denials
and SVID expiry; an unreachable or non-meshnode endpoint is named and exits 1; a bad URL exits 2."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from meshnode.config.duration import parse_duration
from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import dns_name_for
from meshnode.telemetry.topview import Scrape, Stats, quantile, rows
from meshnode.testing import issue_snapshot
from tests.support.procs import Meshnode

ALPHA = "spiffe://example.org/node/alpha"
DELTA = "spiffe://example.org/node/delta"


@contextmanager
def running_node(tmp_path: Path, name: str) -> Iterator[tuple[int, str]]:
    """``meshnode run`` of node NAME (Echo, allows alpha, metrics on); its gRPC port and metrics URL."""
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\nservices = ["meshnode.demo:EchoService"]\n'
        f'[identity]\nsource = "dev"\ntrust_domain = "example.org"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[authz]\nallow = ["{ALPHA}"]\n[telemetry]\nprometheus = "127.0.0.1:0"\n'
    )
    with Meshnode(["run", str(config)]) as node:
        port = node.ready(name)
        url = node.wait_line(rf"^meshnode: node {name} metrics on (http://\S+)$").group(1)
        yield port, url
        assert node.terminate() == 0


def stub(tmp_path: Path, port: int, name: str, caller: str) -> tuple[grpc.Channel, demo_pb2_grpc.EchoStub]:
    ca = DevCA("example.org", state_dir=tmp_path / "state")
    credentials = channel_credentials(issue_snapshot(ca, caller), "example.org")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[
        ("grpc.ssl_target_name_override", dns_name_for(f"spiffe://example.org/node/{name}"))])
    return channel, demo_pb2_grpc.EchoStub(channel)


def top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", "top", "--once", *args],
                          capture_output=True, text=True, timeout=60)


def table(out: str, node: str) -> list[list[str]]:
    """The rows printed under ``NODE <node>`` (after its header), split into cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"NODE {node} "))
    found = []
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        found.append(line.split())
    return found


@pytest.mark.slow
def test_top_once_shows_both_nodes_their_methods_callers_and_denials(tmp_path: Path) -> None:
    with ExitStack() as stack:
        beta_port, beta_url = stack.enter_context(running_node(tmp_path, "beta"))
        gamma_port, gamma_url = stack.enter_context(running_node(tmp_path, "gamma"))
        channel, beta = stub(tmp_path, beta_port, "beta", ALPHA)
        with channel:
            for _ in range(3):
                beta.Say(demo_pb2.SayRequest(text="hi"), timeout=10)
        channel, refused = stub(tmp_path, beta_port, "beta", DELTA)
        with channel, pytest.raises(grpc.RpcError):
            refused.Say(demo_pb2.SayRequest(text="hi"), timeout=10)
        channel, gamma = stub(tmp_path, gamma_port, "gamma", ALPHA)
        with channel:
            for _ in range(2):
                assert len(list(gamma.SayStream(demo_pb2.SayRequest(text="a b c"), timeout=10))) == 3
        done = top(beta_url, gamma_url.removeprefix("http://").removesuffix("/metrics"))  # host:port works too
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for node in ("beta", "gamma"):
        header = rf"^NODE {node}  spiffe://example.org/node/{node}  SVID expires in (\S+)  \(http://"
        left = re.search(header, out, re.M)
        assert left is not None, out
        assert 3000 < parse_duration(left.group(1)) <= 3600  # the dev SVID's hour, less the test's time
    by_peer = {(r[1], r[2]): r for r in table(out, "beta")}
    assert len(by_peer) == 2, out
    allowed, denied = by_peer["meshnode.demo.v1.Echo/Say", ALPHA], by_peer["meshnode.demo.v1.Echo/Say", DELTA]
    assert (allowed[0], allowed[4], allowed[7], allowed[8]) == ("in", "100.0%", "0", "3")
    assert (denied[4], denied[7], denied[8]) == ("0.0%", "1", "1")
    [streams] = table(out, "gamma")
    assert streams[:3] == ["in", "meshnode.demo.v1.Echo/SayStream", ALPHA]
    assert (streams[4], streams[8]) == ("100.0%", "2")


@pytest.mark.slow
def test_an_unreachable_or_foreign_endpoint_is_named_and_exits_1(tmp_path: Path) -> None:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=CollectorRegistry())
    try:
        foreign = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with running_node(tmp_path, "beta") as (_port, beta_url):
            done = top(beta_url, foreign, "127.0.0.1:1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert done.returncode == 1
    assert "NODE beta  " in done.stdout
    assert f"NODE ?  {foreign}: not a meshnode metrics endpoint (no meshnode_node_info)" in done.stdout
    assert "NODE ?  http://127.0.0.1:1/metrics: unreachable (" in done.stdout


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/metrics", "http://", "http:///metrics"])
def test_a_url_that_is_not_http_is_one_line_and_exit_2(url: str) -> None:
    done = top(url)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"meshnode: top: {url!r} is not a metrics URL")


def test_rates_and_quantiles_over_the_interval_between_two_scrapes() -> None:
    def scrape(at: float, calls: float, ok: float, buckets: dict[float, float]) -> Scrape:
        stats = {("in", "s.S/M", ALPHA): Stats(calls, ok, calls - ok, buckets)}
        return Scrape("http://n/metrics", "n", "spiffe://example.org/node/n", 60.0, 100.0, at, stats)

    first = scrape(110.0, 10, 10, {0.001: 10, 0.01: 10, float("inf"): 10})
    second = scrape(112.0, 30, 20, {0.001: 10, 0.01: 30, float("inf"): 30})
    [since_start] = rows(first)
    assert since_start.rate == 1.0 and since_start.success == 1.0 and since_start.calls == 10
    [interval] = rows(second, first)
    assert interval.rate == 10.0 and interval.success == 0.5 and interval.denied == 10
    assert interval.p50 == pytest.approx(0.001 + 0.009 * 0.5)  # the 20 new calls all fell in (1 ms, 10 ms]
    assert quantile(0.99, {0.1: 0, float("inf"): 5}) == 0.1  # past the largest bound: that bound
    assert quantile(0.5, {0.1: 0, float("inf"): 0}) is None
