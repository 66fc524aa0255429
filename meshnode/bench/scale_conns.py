"""Server cost vs concurrent mTLS connections, and the CPU one SVID rotation costs at scale.

Both scenarios run real processes around one dev Workload API agent
(:class:`~meshnode.devagent.agent.DevAgentThread`, in the runner) whose CA
lives in the run's state directory, so client processes issue their own
client SVIDs from it (:class:`~meshnode.bench.pki.BenchPKI`) and no key
crosses a process boundary:

* the server: ``meshnode run`` with Echo and Relay, its identity from the
  agent (``source = "workload-api"``), allowing the bench client;
* for rotation, a target node (``meshnode run``, Relay, identity from the
  agent) and ``[peers.p0..p99]`` on the server, all at the target;
* clients (:mod:`meshnode.bench.scale_client`): up to 500 connections per
  process, each connection one call per second.

Connections: for each level a fresh server; once every connection has
made its first call and a warm-up passed, the server's CPU (``/proc``
utime + stime) and VmRSS are read around a window in which every client
records the calls that ended. Where it bends: calls per second falling
behind the connections, or p99 rising, as the server's CPU nears one core
(a grpc.aio server runs its Python on one thread).

Rotation: the server holds 1,000 client connections (100 of them calling
``Relay.Forward`` through their own peer ``p<i>``, so 100 peer channels are
open and in use). First, under load, windows alternate between load only
and load plus one ``rotate_svids()`` (every SVID re-issued and pushed): the
latency and failures around a rotation. The CPU cost of a rotation is lost
in the noise of 1,000 calls a second on a shared machine, so it is measured
with the connections open and the calls paused: windows alternate between
one call through each peer channel (idle) and a rotation followed by the
same calls. The difference is what a rotation costs the server: new server
credentials, 100 peer channels rebuilt and each re-handshaking with the new
SVID on its next call, the old ones closed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN
from meshnode.bench.protocol import Child
from meshnode.bench.scale_node import NodeProcess, cpu_seconds, machine_busy, rss_kib, write_config
from meshnode.bench.stats import percentile, spread
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.ca import DevCA
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["CONNECTION_LEVELS", "ConnSettings", "agent", "run_connections", "run_rotation"]

CONNECTION_LEVELS = (10, 100, 1_000)
TARGET_ID = f"spiffe://{TRUST_DOMAIN}/bench/target"
_PER_PROCESS = 500


@dataclass(frozen=True)
class ConnSettings:
    levels: Sequence[int] = (*CONNECTION_LEVELS, 2_000)  # past 1,000: where this machine bends
    warmup: float = 3.0
    window: float = 10.0
    rotation_peers: int = 100
    rotation_connections: int = 1_000
    rotations: int = 8  # quiet: connections open, calls paused, one call per peer channel after each
    loaded_rotations: int = 3  # under load: the latency around a rotation
    rotation_window: float = 3.0


@contextlib.contextmanager
def agent(work: Path) -> Iterator[DevAgentThread]:
    """The dev agent of the run: entries server and target, its CA in ``work/ca`` for the clients."""
    sockets = work / "agent"
    sockets.mkdir(mode=0o700, exist_ok=True)
    config = AgentConfig(TRUST_DOMAIN, sockets, (
        EntryConfig("server", parse_spiffe_id(SERVER_ID)), EntryConfig("target", parse_spiffe_id(TARGET_ID)),
    ))
    (work / "ca").mkdir(mode=0o700, exist_ok=True)
    with DevAgentThread(config, ca=DevCA(TRUST_DOMAIN, state_dir=work / "ca")) as running:
        yield running


def _server_tables(name: str, socket: str, *, allow: str, services: Sequence[str],
                   peers: int = 0, peer_port: int = 0) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {
        "node": {"name": name, "listen": "127.0.0.1:0", "mode": "development", "shutdown_grace": 0.0,
                 "services": list(services)},
        "identity": {"source": "workload-api", "socket": socket, "trust_domain": TRUST_DOMAIN},
        "authz": {"allow": [allow], "audit": "none"},
    }
    for i in range(peers):
        tables[f"peers.p{i}"] = {"address": f"127.0.0.1:{peer_port}", "spiffe_id": TARGET_ID, "verify": "dns"}
    return tables


def _clients(work: Path, port: int, connections: int, relay: int, tag: str) -> list[Child]:
    out = []
    for first in range(0, connections, _PER_PROCESS):
        n = min(_PER_PROCESS, connections - first)
        argv = [sys.executable, "-m", "meshnode.bench.scale_client", "--state-dir", str(work / "ca"),
                "--port", str(port), "--connections", str(n), "--first", str(first), "--relay", str(relay)]
        out.append(Child(f"scale client {tag}-{first}", argv, work / f"client-{tag}-{first}.log"))
    return out


def _ready(clients: list[Child], connections: int) -> dict[str, Any]:
    answers = [c.receive(60.0 + connections / 10) for c in clients]
    return {"connected": sum(a["connected"] for a in answers), "failed": sum(a["failed"] for a in answers),
            "failure_samples": [s for a in answers for s in a["failure_samples"]][:5],
            "connect_s": max(a["connect_s"] for a in answers)}


def _window(server_pid: int, clients: list[Child], seconds: float) -> dict[str, Any]:
    """Server CPU and RSS around one window of ``seconds``, and the calls that ended in it."""
    cpu0 = cpu_seconds(server_pid)
    clients0 = sum(cpu_seconds(c.pid) for c in clients)
    busy0, total0 = machine_busy()
    began = time.monotonic()
    for c in clients:
        c.send({"cmd": "window", "duration": seconds})
    answers = [c.receive(seconds + 60.0) for c in clients]
    cpu1, elapsed = cpu_seconds(server_pid), time.monotonic() - began
    clients1 = sum(cpu_seconds(c.pid) for c in clients)
    busy1, total1 = machine_busy()
    latencies = sorted(x for a in answers for x in a["latencies_ms"])
    return {
        "elapsed_s": elapsed,
        "server_cpu_s": cpu1 - cpu0,
        "clients_cpu_s": clients1 - clients0,
        # every process on the machine, ours and others': 100 = all CPUs busy
        "machine_busy_pct": (busy1 - busy0) / (total1 - total0) * 100 if total1 > total0 else None,
        "server_rss_mib": rss_kib(server_pid) / 1024,
        "calls": sum(a["calls"] for a in answers),
        "errors": sum(a["errors"] for a in answers),
        "error_samples": [s for a in answers for s in a["error_samples"]][:5],
        "p50_ms": percentile(latencies, 50, presorted=True) if latencies else None,
        "p99_ms": percentile(latencies, 99, presorted=True) if latencies else None,
    }


def _close(children: list[Child]) -> None:
    for c in children:
        c.close()


def _level(work: Path, running: DevAgentThread, connections: int, settings: ConnSettings) -> dict[str, Any]:
    config = write_config(work / f"conn-server-{connections}.toml", _server_tables(
        f"scale-conn-{connections}", running.socket_address("server"), allow=CLIENT_ID,
        services=["meshnode.demo:EchoService"]))
    with NodeProcess(config, work / f"conn-server-{connections}.log") as server:
        port, _ = server.wait_ready()
        time.sleep(0.5)
        idle_rss = rss_kib(server.pid) / 1024
        clients = _clients(work, port, connections, 0, f"c{connections}")
        try:
            ready = _ready(clients, connections)
            time.sleep(settings.warmup)
            window = _window(server.pid, clients, settings.window)
        finally:
            _close(clients)
    seconds = window["elapsed_s"]
    return {
        "connections": connections, **ready, "idle_rss_mib": idle_rss, **window,
        "calls_per_s": window["calls"] / seconds,
        "server_cpu_pct": window["server_cpu_s"] / seconds * 100,
        "clients_cpu_pct": window["clients_cpu_s"] / seconds * 100,
        "server_cpu_us_per_call": window["server_cpu_s"] / window["calls"] * 1e6 if window["calls"] else None,
        "rss_kib_per_connection": (window["server_rss_mib"] - idle_rss) * 1024 / connections,
    }


def run_connections(work: Path, running: DevAgentThread, settings: ConnSettings) -> dict[str, Any]:
    rows = [_level(work, running, n, settings) for n in settings.levels]
    return {"window_s": settings.window, "interval_s": 1.0, "rows": rows, "bend": _bend(rows)}


def _bend(rows: list[dict[str, Any]]) -> str:
    """Where the server stops keeping up: the first level whose calls or p99 fall behind."""
    base = rows[0]
    for row in rows:
        behind = row["calls_per_s"] < 0.9 * row["connections"]
        slow = row["p99_ms"] is not None and base["p99_ms"] and row["p99_ms"] > 3 * base["p99_ms"]
        if behind or slow or row["errors"]:
            busy = row["machine_busy_pct"]
            return (f"at {row['connections']} connections: {row['calls_per_s']:.0f} calls/s of "
                    f"{row['connections']} expected, p99 {row['p99_ms'] or 0:.1f} ms, {row['errors']} errors, "
                    f"server CPU {row['server_cpu_pct']:.0f}%, clients {row['clients_cpu_pct']:.0f}%, machine "
                    f"{busy if busy is not None else float('nan'):.0f}% busy (of all CPUs, every process)")
    return f"no bend up to {rows[-1]['connections']} connections (calls keep pace, p99 within 3x of the first level)"


def _rotate(running: DevAgentThread) -> None:
    serial = running.svid("server").chain[0].serial_number
    running.rotate_svids()
    if running.svid("server").chain[0].serial_number == serial:
        raise RuntimeError("bench: rotate_svids() did not issue a new server SVID")


def _quiet(server_pid: int, clients: list[Child], running: DevAgentThread | None, seconds: float) -> dict[str, Any]:
    """Server CPU over ``seconds`` from a rotation (``running``) or none, then one call per peer channel."""
    cpu0, began = cpu_seconds(server_pid), time.monotonic()
    if running is not None:
        _rotate(running)
    bursts = [c.request({"cmd": "burst"}, 60.0) for c in clients]
    time.sleep(max(began + seconds - time.monotonic(), 0.0))
    return {"server_cpu_s": cpu_seconds(server_pid) - cpu0, "elapsed_s": time.monotonic() - began,
            "relay_calls": sum(b["calls"] for b in bursts), "errors": sum(b["errors"] for b in bursts),
            "error_samples": [e for b in bursts for e in b["error_samples"]][:5]}


def _rotations(server_pid: int, clients: list[Child], running: DevAgentThread,
               settings: ConnSettings) -> dict[str, Any]:
    """Under load: latency and failures around rotations. Quiet: the CPU one rotation costs."""
    loaded = []
    for _ in range(settings.loaded_rotations):
        idle = _window(server_pid, clients, settings.rotation_window)
        _rotate(running)
        loaded.append({"idle": idle, "rotation": _window(server_pid, clients, settings.rotation_window)})
    for c in clients:
        c.request({"cmd": "pause"})
    time.sleep(1.0)  # calls in flight end
    quiet = []
    for _ in range(settings.rotations):
        idle = _quiet(server_pid, clients, None, settings.rotation_window)
        rotated = _quiet(server_pid, clients, running, settings.rotation_window)
        quiet.append({"idle": idle, "rotation": rotated,
                      "cost_cpu_s": rotated["server_cpu_s"] - idle["server_cpu_s"]})
    return {"loaded": loaded, "quiet": quiet}


def run_rotation(work: Path, running: DevAgentThread, settings: ConnSettings) -> dict[str, Any]:
    peers, connections = settings.rotation_peers, settings.rotation_connections
    target_config = write_config(work / "rot-target.toml", _server_tables(
        "scale-target", running.socket_address("target"), allow=SERVER_ID, services=["meshnode.demo:RelayService"]))
    with NodeProcess(target_config, work / "rot-target.log") as target:
        target_port, _ = target.wait_ready()
        config = write_config(work / "rot-server.toml", _server_tables(
            "scale-rotation", running.socket_address("server"), allow=CLIENT_ID,
            services=["meshnode.demo:EchoService", "meshnode.demo:RelayService"], peers=peers,
            peer_port=target_port))
        with NodeProcess(config, work / "rot-server.log") as server:
            port, _ = server.wait_ready()
            clients = _clients(work, port, connections, peers, "rot")
            try:
                ready = _ready(clients, connections)
                time.sleep(settings.warmup)
                each = _rotations(server.pid, clients, running, settings)
            finally:
                _close(clients)
    loaded, quiet = each["loaded"], each["quiet"]
    windows = [w for p in loaded for w in (p["idle"], p["rotation"])]
    bursts = [p[k] for p in quiet for k in ("idle", "rotation")]
    return {
        "peers": peers, "connections": connections, **ready, "window_s": settings.rotation_window,
        "rotations": len(quiet), "loaded_rotations": len(loaded),
        "cost_cpu_s": spread([p["cost_cpu_s"] for p in quiet]),
        "idle_cpu_s": spread([p["idle"]["server_cpu_s"] for p in quiet]),
        "loaded_server_cpu_pct": spread([w["server_cpu_s"] / w["elapsed_s"] * 100 for w in windows]),
        "p99_ms_idle": spread([p["idle"]["p99_ms"] for p in loaded]),
        "p99_ms_rotation": spread([p["rotation"]["p99_ms"] for p in loaded]),
        "calls": sum(w["calls"] for w in windows) + sum(b["relay_calls"] for b in bursts),
        "errors": sum(w["errors"] for w in windows) + sum(b["errors"] for b in bursts),
        "error_samples": [s for w in windows for s in w["error_samples"]][:5]
        + [s for p in quiet for s in p["rotation"]["error_samples"]][:5],
        "each": each,
    }
