"""The dev agent under a local connection flood: per-uid and per-socket bounds, timeouts, quiet logs.

Real `meshnode agent` processes and in-process agents, real unix-socket
connections; the hostile local user is a forked child running as uid
65534 (needs root).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig, load_agent_config
from meshnode.errors import ConfigError
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import short_tmpdir
from tests.support.agent_process import AgentProcess, fetch_spiffe_id
from tests.support.local_flood import NOBODY, UnixFlood
from tests.support.meshnode_run import closed_by_peer

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second local user needs root (setresuid)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = short_tmpdir("mn-af-")
    os.chmod(d, 0o755)  # the flooding uid must reach the sockets, as on a real host
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def write_agent_toml(d: Path, limits: str) -> Path:
    path = d / "agent.toml"
    path.write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{d}/sockets"\n{limits}\n'
        f'[[entries]]\nname = "alpha"\nspiffe_id = "{ALPHA}"\nuid = {os.getuid()}\n'
        f'[[entries]]\nname = "beta"\nspiffe_id = "{BETA}"\n'
    )
    return path


def refused_by_uid(stderr: str, uid: int) -> int:
    """Refusals of ``uid`` added up over the agent's summary lines."""
    total = 0
    for line in stderr.splitlines():
        if "agent: refused" in line:
            total += sum(int(n) for n in re.findall(rf"uid {uid} on [\w.-]+: [\w -]+ x(\d+)", line))
    return total


# -- agent.toml ----------------------------------------------------------------------------------------


def test_connection_bounds_have_defaults_and_are_read_from_agent_toml(workdir: Path) -> None:
    default = load_agent_config(write_agent_toml(workdir, ""))
    assert (default.max_connections, default.max_connections_per_uid) == (256, 64)
    assert (default.handshake_timeout, default.idle_timeout) == (5.0, 300.0)
    set_ = load_agent_config(write_agent_toml(
        workdir, "max_connections = 10\nmax_connections_per_uid = 3\nhandshake_timeout = 0.5\nidle_timeout = 2"
    ))
    assert (set_.max_connections, set_.max_connections_per_uid, set_.handshake_timeout, set_.idle_timeout) == (
        10, 3, 0.5, 2.0
    )


@pytest.mark.parametrize(
    "line",
    [
        "max_connections = 0",
        "max_connections = 70000",
        "max_connections = 1.5",
        "max_connections_per_uid = 0",
        "max_connections_per_uid = true",
        "handshake_timeout = 0.0",
        "handshake_timeout = nan",
        "handshake_timeout = inf",
        "idle_timeout = 0.5",
        "idle_timeout = 1e300",
    ],
)
def test_out_of_range_bounds_are_refused_naming_the_key(workdir: Path, line: str) -> None:
    key = line.split(" ")[0]
    with pytest.raises(ConfigError) as info:
        load_agent_config(write_agent_toml(workdir, line))
    assert f"'{key}' must be" in str(info.value)


def test_bounds_built_in_code_are_checked_too(workdir: Path) -> None:
    entry = EntryConfig("alpha", parse_spiffe_id(ALPHA))
    with pytest.raises(ConfigError, match="handshake_timeout must be"):
        AgentConfig(trust_domain="example.org", socket_dir=workdir, entries=(entry,), handshake_timeout=math.nan)


# -- a real agent process, flooded by another local user ------------------------------------------------


@needs_root
@pytest.mark.slow
def test_a_local_flood_holds_only_its_uid_share_and_workloads_keep_their_identities(workdir: Path) -> None:
    """uid 65534 opens 1,100 idle connections to alpha's uid-gated socket, against an agent started with a
    soft limit of 1024 open files. Before: the agent ran out of descriptors, every fetch failed and it wrote
    megabytes of asyncio tracebacks. Now it holds 16 of them (the per-uid limit), refuses the rest at once,
    and root's workloads on alpha (gated) and beta (open) get their SVIDs while the flood is held."""
    agent = AgentProcess(
        write_agent_toml(workdir, "max_connections_per_uid = 16\nhandshake_timeout = 60"), soft_nofile=1024
    )
    sockets = workdir / "sockets"
    os.chmod(sockets, 0o755)
    flood = UnixFlood(sockets / "alpha.sock", 1100)
    try:
        assert flood.opened == 1100
        assert flood.wait_open_at_most(16, timeout=60) == 16  # the rest were closed at accept
        assert fetch_spiffe_id(sockets / "alpha.sock") == ALPHA
        assert fetch_spiffe_id(sockets / "beta.sock") == BETA
        assert flood.still_open() == 16  # the identities were handed out while the flood was held
    finally:
        flood.close()
        assert agent.stop() == 0
    stderr = agent.stderr()
    assert "Traceback" not in stderr and "out of system resource" not in stderr
    assert len(stderr) < 10_000, stderr[-3000:]
    assert refused_by_uid(stderr, NOBODY) == 1100 - 16
    assert re.search(rf"permission denied to 16 connections in the last [\d.]+ s \(uid {NOBODY} on alpha.sock", stderr)


@needs_root
@pytest.mark.slow
def test_with_the_defaults_the_battery_flood_leaves_identities_and_stderr_alone(workdir: Path) -> None:
    """The battery's scenario as is: default agent.toml, soft limit 1024, 1,100 idle connections from
    another uid to a uid-gated socket."""
    agent = AgentProcess(write_agent_toml(workdir, ""), soft_nofile=1024)
    sockets = workdir / "sockets"
    os.chmod(sockets, 0o755)
    flood = UnixFlood(sockets / "alpha.sock", 1100)
    try:
        assert flood.opened == 1100
        # while the agent sheds the burst at accept, a workload's first connection may be refused with it;
        # Workload API clients retry, and then get their SVID while the flood is held
        assert fetch_spiffe_id(sockets / "alpha.sock", retry=True) == ALPHA
        assert fetch_spiffe_id(sockets / "beta.sock", retry=True) == BETA
        assert agent.open_fds() < 1024 // 2
    finally:
        flood.close()
        assert agent.stop() == 0
    stderr = agent.stderr()
    assert "Traceback" not in stderr and len(stderr) < 10_000, stderr[-3000:]
    assert refused_by_uid(stderr, NOBODY) > 0


@needs_root
def test_the_per_socket_bound_spares_the_other_sockets(workdir: Path) -> None:
    agent = AgentProcess(write_agent_toml(workdir, "max_connections = 5\nhandshake_timeout = 60"))
    sockets = workdir / "sockets"
    os.chmod(sockets, 0o755)
    flood = UnixFlood(sockets / "beta.sock", 12)
    try:
        assert flood.wait_open_at_most(5, timeout=60) == 5
        with pytest.raises(Exception):  # noqa: B017 - beta itself is full: grpc.RpcError UNAVAILABLE
            fetch_spiffe_id(sockets / "beta.sock", timeout=3)
        assert fetch_spiffe_id(sockets / "alpha.sock") == ALPHA
    finally:
        flood.close()
        assert agent.stop() == 0
    assert "per-socket limit 5 x7" in agent.stderr()


# -- timeouts, in process ---------------------------------------------------------------------------------


def agent_config(d: Path, **limits: Any) -> AgentConfig:
    return AgentConfig(
        trust_domain="example.org", socket_dir=d / "sockets",
        entries=(
            EntryConfig("alpha", parse_spiffe_id(ALPHA), uid=os.getuid()),
            EntryConfig("beta", parse_spiffe_id(BETA)),
        ),
        **limits,
    )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


@pytest.mark.parametrize("entry", ["alpha", "beta"])
def test_a_connection_that_never_starts_http2_is_closed_at_the_handshake_timeout(workdir: Path, entry: str) -> None:
    with DevAgentThread(agent_config(workdir, handshake_timeout=0.5, idle_timeout=3600)) as agent:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(agent.socket_path(entry)))
            assert closed_by_peer(s, 60)
        assert fetch_spiffe_id(agent.socket_path(entry)) == (ALPHA if entry == "alpha" else BETA)


def test_a_connection_without_calls_is_closed_at_the_idle_timeout(workdir: Path) -> None:
    with DevAgentThread(agent_config(workdir, handshake_timeout=300, idle_timeout=1)) as agent:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(agent.socket_path("beta")))
            s.sendall(HTTP2_PREFACE)
            received = b""
            s.settimeout(60)
            while chunk := s.recv(4096):
                received += chunk
        assert b"\x07\x00\x00\x00\x00\x00" in received  # a GOAWAY frame (type 7, stream 0) before the close


async def test_repeated_event_loop_errors_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    from meshnode.devagent.limits import LoopErrors

    loop = asyncio.get_running_loop()
    errors = LoopErrors()
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    with caplog.at_level("ERROR"):
        for _ in range(500):
            errors(loop, context)
        errors.log_summary()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0] == "socket.accept() out of system resource"  # the first, in full (with its traceback)
    assert "499 repeated event loop errors" in lines[1] and "Too many open files x499" in lines[1]
