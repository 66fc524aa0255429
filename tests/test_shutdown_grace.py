"""`meshnode run` stopping with calls still running past shutdown_grace: one summary line, no tracebacks."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot
from tests.support.slow_service import STARTED

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


class RunningNode:
    def __init__(self, proc: subprocess.Popen[str], port: int, state: Path) -> None:
        self.proc = proc
        self.port = port
        self.state = state

    def channel(self) -> grpc.Channel:
        caller = issue_snapshot(DevCA("example.org", state_dir=self.state), BETA)
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}", channel_credentials(caller, "example.org"),
            options=[("grpc.ssl_target_name_override", dns_name_for(ALPHA))],
        )

    def wait_started(self, calls: int) -> None:
        assert self.proc.stdout is not None
        seen = 0
        while seen < calls:
            line = self.proc.stdout.readline()
            assert line, "meshnode run ended before the calls started"
            seen += line.strip() == STARTED


@pytest.fixture
def run_node(tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(service: str) -> RunningNode:
        # with tracing on, gRPC's per-call tasks end later: the case that logged two tracebacks per call
        (tmp_path / "node.toml").write_text(
            f'[node]\nname = "alpha"\nlisten = "127.0.0.1:0"\nservices = ["{service}"]\nshutdown_grace = 0.5\n'
            f'[identity]\nsource = "dev"\ntrust_domain = "example.org"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[authz]\nallow = ["*"]\n[telemetry]\nexporter = "jsonl"\njsonl_path = "{tmp_path / "spans.jsonl"}"\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli", "run", str(tmp_path / "node.toml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"ready on 127\.0\.0\.1:(\d+)", ready)
        assert match, proc.stderr.read() if proc.poll() is not None else ready  # type: ignore[union-attr]
        return RunningNode(proc, int(match.group(1)), tmp_path / "state")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(node: RunningNode) -> tuple[int, str]:
    node.proc.send_signal(signal.SIGTERM)
    _, stderr = node.proc.communicate(timeout=60)
    return node.proc.returncode, stderr


@pytest.mark.slow
def test_calls_cancelled_at_shutdown_give_one_summary_line_and_no_traceback(run_node) -> None:  # type: ignore[no-untyped-def]
    node = run_node("tests.support.slow_service:SlowEcho")
    with node.channel() as channel:
        stub = demo_pb2_grpc.EchoStub(channel)
        unary = [stub.Say.future(demo_pb2.SayRequest(text="hi"), timeout=60) for _ in range(3)]
        streams = [stub.SayStream(demo_pb2.SayRequest(text="hi"), timeout=60) for _ in range(2)]
        assert [next(s).text for s in streams] == ["first", "first"]
        node.wait_started(5)
        status, stderr = stop(node)
        codes = []
        for call in unary:
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            codes.append(info.value.code())
        for stream in streams:
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            codes.append(info.value.code())
    assert status == 0, stderr
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 5
    assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr
    summary = [line for line in stderr.splitlines() if "shutdown grace were cancelled" in line]
    assert len(summary) == 1, stderr
    assert "alpha: 5 call(s) still running after the 0.5 s shutdown grace were cancelled" in summary[0]


@pytest.mark.slow
def test_a_stuck_sync_method_does_not_hold_a_stopping_node(run_node) -> None:  # type: ignore[no-untyped-def]
    """The method waits 600 s; the node exits after its grace, saying why it did not wait."""
    node = run_node("tests.support.slow_service:StuckEcho")
    with node.channel() as channel:
        call = demo_pb2_grpc.EchoStub(channel).Say.future(demo_pb2.SayRequest(text="hi"), timeout=60)
        node.wait_started(1)
        status, stderr = stop(node)
        with pytest.raises(grpc.RpcError) as info:
            call.result()
    assert status == 0, stderr
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Traceback" not in stderr, stderr
    assert "alpha: 1 call(s) still running after the 0.5 s shutdown grace were cancelled" in stderr
    assert "1 handler thread(s) still running a cancelled call; exiting without waiting for them" in stderr
