"""A new peer channel's first call, across source trees, in one interleaved run.

``python -m meshnode.bench.first_call --before /path/to/older/checkout``

Issue 14 (peers as services) changed how peer channels are built: endpoint
lists, EDS, retry policies, a service config. This times, for each source
tree (``--before`` and this one), a fresh client Node's first call through
a peer channel (``node.stub()`` to the reply: TCP, TLS, for spiffe-id the
xDS resources), for ``verify = "dns"`` and ``"spiffe-id"``, against the same
servers; and, in this tree only, the same with a peer of three endpoints.

Each sample batch is a ``python -m meshnode.bench.client --first-calls``
process started with the tree on ``PYTHONPATH`` (an older checkout runs its
own client code), ``--count`` first calls each (a fresh Node per call). The
servers (three ``C`` nodes, :mod:`meshnode.bench.server` variant ``C3``) are
this tree's. Rounds interleave the trees and kinds, the order shifted by
one each round. Prints a markdown table (median and quartiles of every
sample) and writes first-call.json to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshnode.bench.pki import BenchPKI
from meshnode.bench.protocol import Child
from meshnode.bench.stats import spread

__all__ = ["main"]

_THIS_TREE = Path(__file__).resolve().parents[2]
_KINDS = ("node-dns", "node-spiffe-id")


def _batch(tree: Path, work: Path, kind: str, address: str, count: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "NONE"}
    # cwd=work: with -m, the current directory comes first on sys.path and would shadow the tree
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.bench.client", "--first-calls", f"X={kind}@{address}",
         "--count", str(count), "--state-dir", str(work / "ca")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    for line in proc.stdout.splitlines():
        answer = json.loads(line)
        if "first_call_ms" in answer:
            return [float(t) for t in answer["first_call_ms"]]
        if "error" in answer:
            raise RuntimeError(f"{tree} {kind}: {answer['error']}")
    raise RuntimeError(f"{tree} {kind}: no answer; stderr: {proc.stderr[-2000:]}")


def run(trees: dict[str, Path], *, rounds: int, count: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="mnb-fc-", dir="/tmp"))
        stack.callback(shutil.rmtree, work, True)
        BenchPKI(work / "ca")
        server = Child("servers C3", [sys.executable, "-m", "meshnode.bench.server", "--variant", "C3",
                                      "--state-dir", str(work / "ca")], out / "first-call-server.log")
        stack.callback(server.close)
        ports = server.receive(120.0)["ports"]
        one = f"127.0.0.1:{ports['main']}"
        three = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports.values())
        cells = [(name, tree, kind, 1, one) for name, tree in trees.items() for kind in _KINDS]
        cells += [("this", _THIS_TREE, kind, 3, three) for kind in _KINDS]
        samples: dict[str, list[float]] = {}
        for r in range(rounds):
            shift = r % len(cells)
            for name, tree, kind, endpoints, address in cells[shift:] + cells[:shift]:
                key = f"{name} {kind} {endpoints}"
                samples.setdefault(key, []).extend(_batch(tree, work, kind, address, count))
            print(f"first-call: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    summary = {key: spread(values) for key, values in samples.items()}
    result = {"trees": {k: str(v) for k, v in trees.items()}, "rounds": rounds, "count": count,
              "summary": summary, "samples": samples}
    (out / "first-call.json").write_text(json.dumps(result, indent=2))
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = ["| tree | verify | endpoints | first call, ms: median [IQR] | vs before |", "|---|---|---:|---:|---:|"]
    summary = result["summary"]
    for key, s in summary.items():
        tree, kind, endpoints = key.split(" ")
        before = summary.get(f"before {kind} 1")
        rel = s["median"] / before["median"] if before and before["median"] else None
        shown = f"{s['median']:.1f} [{s['q1']:.1f}-{s['q3']:.1f}]"
        lines.append(f"| {tree} | {kind.removeprefix('node-')} | {endpoints} | {shown} | "
                     f"{'-' if rel is None else f'{rel:.3f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.first_call", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the older source tree (a checkout)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=5, help="first calls per batch (one process per batch)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    result = run({"before": args.before.resolve(), "this": _THIS_TREE}, rounds=args.rounds, count=args.count,
                 out=args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
