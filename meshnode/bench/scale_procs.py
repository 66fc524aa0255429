"""Memory and start-up vs configured peers, and process start-up next to ``import grpc``.

Peers: for 1, 10, 100 and 1,000 ``[peers.NAME]`` entries (each its own
name and SPIFFE ID, all at one address nothing listens on), a fresh
``meshnode run`` with the dev identity source, in each verification mode.
Peer channels are created on a peer's first call, so an idle peer should
cost only its configuration (and, in ``spiffe-id`` mode, its xDS
resources): the table gives time to the ready line, VmRSS and open file
descriptors one second after it, and RSS per idle peer (the slope from the
smallest to the largest count).

Start-up: ``meshnode run`` (dev identity, no peers) to its ready line,
``meshnode --help`` to its exit, and ``python -c "import grpc"`` (the floor:
any grpcio program pays it), each run N times, interleaved, median and
quartiles. ``meshnode`` is ``python -m meshnode.cli`` here: what the console
script runs, without the script's own few milliseconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshnode.bench.pki import TRUST_DOMAIN
from meshnode.bench.scale_node import NodeProcess, open_fds, rss_kib, write_config
from meshnode.bench.stats import spread

__all__ = ["PEER_COUNTS", "run_peer_scale", "run_startup"]

PEER_COUNTS = (1, 10, 100, 1_000)
_SETTLE = 1.0  # seconds after the ready line before RSS is read
_NOWHERE = "127.0.0.1:9"  # discard: never dialled, the channels stay lazy


def _node_tables(name: str, peers: int, verify: str) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {
        "node": {"name": name, "listen": "127.0.0.1:0", "mode": "development", "shutdown_grace": 0.0,
                 "services": ["meshnode.demo:EchoService"]},
        "identity": {"source": "dev", "trust_domain": TRUST_DOMAIN},
        "authz": {"allow": [f"spiffe://{TRUST_DOMAIN}/bench/client"]},
    }
    for i in range(peers):
        tables[f"peers.p{i}"] = {"address": _NOWHERE, "spiffe_id": f"spiffe://{TRUST_DOMAIN}/peer/{i}",
                                 "verify": verify}
    return tables


def _one_node(work: Path, name: str, peers: int, verify: str) -> dict[str, Any]:
    config = write_config(work / f"{name}.toml", _node_tables(name, peers, verify))
    with NodeProcess(config, work / f"{name}.log") as node:
        _, ready_s = node.wait_ready()
        time.sleep(_SETTLE)
        return {"peers": peers, "verify": verify, "ready_ms": ready_s * 1e3, "rss_mib": rss_kib(node.pid) / 1024,
                "fds": open_fds(node.pid)}


def run_peer_scale(work: Path, *, counts: Sequence[int] = PEER_COUNTS,
                   modes: Sequence[str] = ("dns", "spiffe-id")) -> dict[str, Any]:
    rows = [_one_node(work, f"scale-peers-{verify}-{n}", n, verify) for verify in modes for n in counts]
    slopes: dict[str, float | None] = {}
    for verify in modes:
        mine = sorted((r for r in rows if r["verify"] == verify), key=lambda r: r["peers"])
        low, high = mine[0], mine[-1]
        span = high["peers"] - low["peers"]
        slopes[verify] = (high["rss_mib"] - low["rss_mib"]) * 1024 / span if span else None
    return {"rows": rows, "rss_kib_per_idle_peer": slopes, "settle_s": _SETTLE}


def _timed(argv: Sequence[str]) -> float:
    start = time.monotonic()
    subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def run_startup(work: Path, *, runs: int = 10) -> dict[str, Any]:
    """Seconds to ready / exit of each command, ``runs`` interleaved rounds."""
    config = write_config(work / "scale-startup.toml", _node_tables("scale-startup", 0, "dns"))

    def node_ready() -> float:
        with NodeProcess(config, work / "scale-startup.log") as node:
            return node.wait_ready()[1]

    commands: dict[str, Callable[[], float]] = {
        "meshnode run (to ready)": node_ready,
        "meshnode --help": lambda: _timed([sys.executable, "-m", "meshnode.cli", "--help"]),
        "python -c 'import grpc'": lambda: _timed([sys.executable, "-c", "import grpc"]),
    }
    samples: dict[str, list[float | None]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, measure in commands.items():
            samples[name].append(measure() * 1e3)
    floor = spread(samples["python -c 'import grpc'"])["median"]
    out = []
    for name, values in samples.items():
        ms = spread(values)
        median = ms["median"]
        out.append({"command": name, "ms": ms,
                    "vs_import_grpc": median / floor if median is not None and floor else None})
    return {"runs": runs, "rows": out}
