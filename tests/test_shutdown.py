"""Stopping a node: signals, grace, and what the operator sees."""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path

import grpc
import pytest

from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot
from tests.support.procs import Meshnode

NODE = "spiffe://example.org/node/stall"
CLIENT = "spiffe://example.org/node/client"


def stall_node(tmp_path: Path, grace: float) -> tuple[Path, DevCA]:
    ca = DevCA("example.org", state_dir=tmp_path / "ca")  # the node's dev source loads this CA
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "stall"\nlisten = "127.0.0.1:0"\nshutdown_grace = {grace}\n'
        'services = ["tests.support.services:Stall"]\n'
        f'[identity]\nsource = "dev"\nstate_dir = "{tmp_path / "ca"}"\n'
        f'[authz]\nallow = ["{CLIENT}"]\n'
    )
    return config, ca


@pytest.mark.slow
def test_a_second_signal_ends_the_grace_at_once_and_the_node_still_exits_cleanly(tmp_path: Path) -> None:
    config, ca = stall_node(tmp_path, grace=600)  # far longer than this test may take
    node = Meshnode(["run", str(config)])
    try:
        port = int(node.wait_line(r"node stall ready on 127\.0\.0\.1:(\d+)").group(1))
        caller = issue_snapshot(ca, CLIENT)
        channel = grpc.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(caller, "example.org"),
            options=[("grpc.ssl_target_name_override", dns_name_for(NODE))],
        )
        outcome: list[grpc.StatusCode] = []

        def call() -> None:
            try:
                demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="wait"), timeout=120)
            except grpc.RpcError as exc:
                outcome.append(exc.code())

        caller_thread = threading.Thread(target=call)
        caller_thread.start()
        node.wait_line(r"^stall: entered$")
        node.proc.send_signal(signal.SIGTERM)
        node.wait_line(re.escape("node: stall stopping (grace 600.0 s)"))
        node.proc.send_signal(signal.SIGTERM)  # before: the default handler, exit -15 mid-grace
        assert node.proc.wait(timeout=60) == 0, node.output()
        caller_thread.join(timeout=60)
        channel.close()
        assert outcome and outcome[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert "SIGTERM again: stopping now" in node.output()
        assert "Traceback" not in node.output()
    finally:
        node.stop()
