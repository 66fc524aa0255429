"""``meshnode bench --scale``: how meshnode's costs grow with policy size, peers and connections.

Scenarios (each in its module):

* ``policy`` (:mod:`~meshnode.bench.scale_policy`): decision cost vs 10 to
  10,000 rules, A43 file and allowlist, cache miss and hit; load and reload
  time at 10,000 rules;
* ``peers`` (:mod:`~meshnode.bench.scale_procs`): ``meshnode run`` time to
  ready, RSS and open files vs 1 to 1,000 configured peers;
* ``connections`` (:mod:`~meshnode.bench.scale_conns`): server RSS and CPU,
  call latency and errors vs 10 to 2,000 mTLS connections calling once a
  second;
* ``rotation``: server CPU-seconds per SVID rotation with 100 open peer
  channels and 1,000 server connections;
* ``startup``: ``meshnode run`` to ready and ``meshnode --help`` next to
  ``python -c "import grpc"``.

``--quick`` runs every scenario at small sizes (tens of seconds): a smoke
run for the test suite, whose numbers mean nothing. The full run takes a
few minutes. Nothing here pins CPUs: the scenarios are about growth, and
servers and clients share the machine's CPUs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meshnode.bench.scale_conns import ConnSettings, agent, run_connections, run_rotation
from meshnode.bench.scale_policy import POLICY_SIZES, run_policy_scale
from meshnode.bench.scale_procs import PEER_COUNTS, run_peer_scale, run_startup

__all__ = ["SCENARIOS", "ScaleSettings", "run_scale"]

SCENARIOS = ("policy", "peers", "connections", "rotation", "startup")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ScaleSettings:
    out: Path
    policy_sizes: Sequence[int] = POLICY_SIZES
    decision_calls: int = 2000
    repeats: int = 7
    peer_counts: Sequence[int] = PEER_COUNTS
    peer_modes: Sequence[str] = ("dns", "spiffe-id")
    connections: ConnSettings = field(default_factory=ConnSettings)
    startup_runs: int = 10
    quick: bool = False

    @classmethod
    def quick_run(cls, out: Path) -> ScaleSettings:
        return cls(
            out, policy_sizes=(10, 1_000), decision_calls=200, repeats=2, peer_counts=(1, 10),
            peer_modes=("dns",),
            connections=ConnSettings(levels=(10,), warmup=1.2, window=1.0, rotation_peers=3,
                                     rotation_connections=10, rotations=1, loaded_rotations=1,
                                     rotation_window=1.0),
            startup_runs=1, quick=True,
        )

    def describe(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        return values


def _machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "load_avg_at_start": load,
    }


def _scenarios(settings: ScaleSettings, work: Path, result: dict[str, Any], say: Progress) -> None:
    say(f"policy: decision cost at {', '.join(map(str, settings.policy_sizes))} rules")
    result["policy"] = run_policy_scale(work, sizes=settings.policy_sizes, calls=settings.decision_calls,
                                        repeats=settings.repeats)
    say(f"peers: meshnode run with {', '.join(map(str, settings.peer_counts))} peers")
    result["peers"] = run_peer_scale(work, counts=settings.peer_counts, modes=settings.peer_modes)
    with agent(work) as running:
        conns = settings.connections
        say(f"connections: {', '.join(map(str, conns.levels))} mTLS connections, one call a second each")
        result["connections"] = run_connections(work, running, conns)
        say(f"rotation: {conns.rotations} SVID rotations, {conns.rotation_peers} peer channels, "
            f"{conns.rotation_connections} connections")
        result["rotation"] = run_rotation(work, running, conns)
    say(f"startup: {settings.startup_runs} interleaved runs of each command")
    result["startup"] = run_startup(work, runs=settings.startup_runs)


def run_scale(settings: ScaleSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run every scenario; returns the raw numbers (see :mod:`meshnode.bench.scale_report`)."""
    say = progress or (lambda _message: None)
    began = time.monotonic()
    machine = _machine()
    settings.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "meshnode_bench_scale": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings.describe(),
    }
    # unix socket paths are short: the agent's sockets and the processes' files go in a short temp dir
    with tempfile.TemporaryDirectory(prefix="mn-scale-") as tmp:
        work = Path(tmp)
        try:
            _scenarios(settings, work, result, say)
        finally:  # the processes' stderr, kept for a look after the run (or after a failure)
            logs = settings.out / "logs"
            logs.mkdir(exist_ok=True)
            for log in work.glob("*.log"):
                shutil.copyfile(log, logs / log.name)
    result["elapsed_s"] = time.monotonic() - began
    return result
