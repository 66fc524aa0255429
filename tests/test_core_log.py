"""gRPC core's per-connection log lines in `meshnode run`: counted and summarised, not one line each."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.testing import short_tmpdir
from tests.support.meshnode_run import NodeProcess, counter_total

SERVER_HANDSHAKE_FAILURES = "meshnode.server.handshake_failures"
SUMMARY = re.compile(r"server: (\d+) TLS handshakes? failed in the last [\d.]+ s \(([^)]*)\)")


def non_tls_connections(port: int, count: int) -> None:
    """``count`` connections that speak HTTP/1.1 where TLS is expected; each waits for the server to close."""
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: beta\r\n\r\n")
            try:
                while s.recv(4096):
                    pass
            except ConnectionResetError:
                pass


def summarised(stderr: str) -> dict[str, int]:
    """Failed handshakes by reason, added up over the summary lines."""
    out: dict[str, int] = {}
    for match in SUMMARY.finditer(stderr):
        for part in match.group(2).split(", "):
            reason, _, count = part.rpartition(" x")
            out[reason] = out.get(reason, 0) + int(count)
    return out


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = short_tmpdir("mn-log-")
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


METRICS = '[telemetry]\nexporter = "none"\nmetrics_exporter = "console"\n'


@pytest.mark.slow
def test_a_non_tls_flood_gives_a_counter_and_a_few_summary_lines(workdir: Path) -> None:
    """Before: one 'Handshake failed' line (about 200 bytes) per connection: 5,000 connections wrote 1 MB."""
    node = NodeProcess(workdir, sections=METRICS, env={"GRPC_VERBOSITY": "", "GRPC_TRACE": ""})
    count = 3000
    try:
        before = len(node.stderr())
        non_tls_connections(node.port, count)
    finally:
        assert node.stop() == 0, node.stderr()
    stderr = node.stderr()
    flood_part = stderr[before:]
    assert "Handshake failed" not in stderr
    assert summarised(stderr) == {"HTTP_REQUEST": count}
    lines = flood_part.splitlines()
    assert len(lines) <= 10, flood_part  # summaries (one per 10 s, the first at once), the stop line
    assert len(flood_part) < 5_000
    assert counter_total(node.stdout_tail, SERVER_HANDSHAKE_FAILURES, **{"error.type": "HTTP_REQUEST"}) == count


def test_grpc_verbosity_set_by_the_user_brings_the_lines_back_and_they_are_still_counted(workdir: Path) -> None:
    node = NodeProcess(workdir, sections=METRICS, env={"GRPC_VERBOSITY": "INFO"})
    try:
        non_tls_connections(node.port, 5)
    finally:
        assert node.stop() == 0, node.stderr()
    stderr = node.stderr()
    assert len(re.findall(r"ssl_transport_security\.cc:\d+\] Handshake failed .*HTTP_REQUEST", stderr)) == 5
    assert summarised(stderr) == {"HTTP_REQUEST": 5}
    assert counter_total(node.stdout_tail, SERVER_HANDSHAKE_FAILURES) == 5


def test_grpc_verbosity_error_set_by_the_user_is_respected(workdir: Path) -> None:
    """At ERROR, gRPC core prints no handshake line at all (there is then nothing to count)."""
    node = NodeProcess(workdir, env={"GRPC_VERBOSITY": "ERROR"})
    try:
        non_tls_connections(node.port, 5)
    finally:
        assert node.stop() == 0, node.stderr()
    assert "Handshake failed" not in node.stderr()
    assert "node: beta stopping" in node.stderr()
