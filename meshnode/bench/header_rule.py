"""The header-rule scenario, across source trees, in one interleaved run.

``python -m meshnode.bench.header_rule --before /path/to/older/checkout``

Issue 11: one A43 rule with a header condition turned the decision cache
off for the whole policy; with 10,001 rules that cost 14x the throughput.
This compares, for each source tree (``--before`` and this one, or any
``--tree NAME=PATH``), a node whose policy has 10,001 allow rules (``P``)
with the same plus one header rule (``Q``), :mod:`meshnode.bench.policies`.

Each (tree, policy) is a ``meshnode run`` process started with the tree on
``PYTHONPATH`` (so an older checkout runs its own code: nothing here needs
to exist there but ``meshnode run`` and ``meshnode.bench.service``), pinned
to one CPU; one bench client process (this tree) holds a channel to each,
pinned to the other CPU. Every round runs each server for ``--duration``
seconds, the order shifted by one each round; server CPU comes from
``/proc/PID/stat``. Prints a markdown table (medians and quartiles over
rounds; ratios are per round) and writes header-rule.json to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshnode.bench.pki import SERVER_ID, TRUST_DOMAIN, BenchPKI
from meshnode.bench.policies import SCALE_RULES, write_policy
from meshnode.bench.protocol import Child
from meshnode.bench.stats import ratio, spread
from meshnode.config.duration import duration_argument
from meshnode.errors import MeshnodeError

__all__ = ["main"]

_THIS_TREE = Path(__file__).resolve().parents[2]
_POLICIES = {"P": False, "Q": True}  # variant -> with the header rule
_READY_TIMEOUT = 180.0  # parsing 10,001 rules takes seconds on a loaded machine


def _node_toml(name: str, policy: Path) -> str:
    return (
        f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\nmode = "development"\n'
        'services = ["meshnode.bench.service:BenchEcho"]\nshutdown_grace = 0.0\n\n'
        f'[identity]\nsource = "files"\ntrust_domain = "{TRUST_DOMAIN}"\n'
        'cert = "svid.pem"\nkey = "key.pem"\nbundle = "bundle.pem"\n\n'
        f'[authz]\npolicy = "{policy}"\naudit = "on_deny"\n'
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpu: int | None) -> None:
    if cpu is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(tid), {cpu})


class _Server:
    """One ``meshnode run`` of one tree and one policy."""

    def __init__(self, name: str, tree: Path, work: Path, policy: Path) -> None:
        self.name = name
        config = work / f"{name}.toml"
        config.write_text(_node_toml(name, policy))
        self.log_path = work / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed in close()
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
        env.pop("MESHNODE_MODE", None)
        # cwd=work: with -m, the current directory comes first on sys.path and would shadow the tree
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli", "run", str(config)],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        self.address = ""

    def wait_ready(self, timeout: float) -> str:
        """The address from ``meshnode: node NAME ready on HOST:PORT as ID (mode ...)``."""
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([stdout], [], [], left)[0]:
                break
            line = stdout.readline()
            if not line:  # the process ended
                break
            if " ready on " in line:
                self.address = line.split(" ready on ", 1)[1].split()[0]
                return self.address
        raise MeshnodeError(f"bench: server {self.name} did not start within {timeout:g} s; see {self.log_path}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def run(trees: dict[str, Path], *, rounds: int, duration: float, callers: int, pin: bool, out: Path) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu, client_cpu = (cpus[0], cpus[1]) if pin and len(cpus) >= 2 else (None, None)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="mnb-hr-", dir="/tmp"))
        stack.callback(shutil.rmtree, work, True)
        pki = BenchPKI(work / "ca")
        snapshot = pki.snapshot(SERVER_ID)
        (work / "svid.pem").write_bytes(snapshot.chain_pem)
        (work / "key.pem").write_bytes(snapshot.key_pem)
        (work / "bundle.pem").write_bytes(snapshot.bundle_pem(TRUST_DOMAIN))
        policies = {v: write_policy(work / f"policy-{v}.json", header_rule=h) for v, h in _POLICIES.items()}
        servers: dict[str, _Server] = {}
        for tree_name, tree in trees.items():
            for variant, policy in policies.items():
                server = _Server(f"{tree_name}-{variant}", tree, work, policy)
                stack.callback(server.close)
                servers[server.name] = server
        for server in servers.values():
            server.wait_ready(_READY_TIMEOUT)
            _pin(server.proc.pid, server_cpu)
        argv = [sys.executable, "-m", "meshnode.bench.client", "--state-dir", str(work / "ca")]
        argv += [f"--target={n}=mtls@{s.address}" for n, s in servers.items()]
        if client_cpu is not None:
            argv += ["--cpu", str(client_cpu)]
        client = stack.enter_context(Child("client", argv, out / "header-rule-client.log"))
        client.receive(_READY_TIMEOUT)
        names = list(servers)
        cells: list[dict[str, Any]] = []
        for r in range(-1, rounds):  # round -1 warms up, unrecorded
            shift = max(r, 0) % len(names)
            for name in names[shift:] + names[:shift]:
                pid = servers[name].proc.pid
                before = _cpu_seconds(pid)
                got = client.request({"cmd": "load", "target": name, "unary": callers, "stream": 0,
                                      "duration": duration if r >= 0 else 0.3}, timeout=duration + 60)
                cpu = _cpu_seconds(pid) - before
                if r >= 0:
                    cells.append({"round": r, "server": name, "calls": got["calls"], "errors": got["errors"],
                                  "calls_per_s": got["calls"] / got["elapsed"],
                                  "server_cpu_us": cpu / got["calls"] * 1e6 if got["calls"] else None})
            print(f"header-rule bench: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return _summary(cells, trees, rounds)


def _summary(cells: list[dict[str, Any]], trees: dict[str, Path], rounds: int) -> dict[str, Any]:
    by = {(c["round"], c["server"]): c for c in cells}

    def per_round(a: str, b: str, key: str) -> dict[str, Any]:
        return spread([ratio(by[r, a][key], by[r, b][key]) for r in range(rounds)])

    servers = sorted({c["server"] for c in cells})
    first = next(iter(trees))
    return {
        "rules": SCALE_RULES,
        "trees": {k: str(v) for k, v in trees.items()},
        "servers": {
            s: {"calls_per_s": spread([c["calls_per_s"] for c in cells if c["server"] == s]),
                "server_cpu_us": spread([c["server_cpu_us"] for c in cells if c["server"] == s]),
                "errors": sum(c["errors"] for c in cells if c["server"] == s)}
            for s in servers
        },
        "header_rule_throughput_ratio": {t: per_round(f"{t}-Q", f"{t}-P", "calls_per_s") for t in trees},
        "vs_first_tree_throughput": {f"{t}-{v}": per_round(f"{t}-{v}", f"{first}-{v}", "calls_per_s")
                                     for t in trees for v in _POLICIES},
        "cells": cells,
    }


def _fmt(s: dict[str, Any], digits: int = 0) -> str:
    if s["median"] is None:
        return "-"
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def render(result: dict[str, Any]) -> str:
    first = next(iter(result["trees"]))
    lines = [
        f"# Header-rule scenario: {result['rules']:,} allow rules (P), plus one header rule (Q)", "",
        "Trees: " + ", ".join(f"**{k}** = `{v}`" for k, v in result["trees"].items()), "",
        f"| server | calls/s | server CPU µs/call | calls/s vs {first} | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["servers"].items():
        vs = result["vs_first_tree_throughput"].get(name)
        lines.append(f"| {name} | {_fmt(row['calls_per_s'])} | {_fmt(row['server_cpu_us'])} | "
                     f"{_fmt(vs, 2) if vs else '-'} | {row['errors']} |")
    lines += ["", "Q/P throughput (what the header rule costs), per round:"]
    lines += [f"- {t}: {_fmt(s, 3)}" for t, s in result["header_rule_throughput_ratio"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.header_rule", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="an older source tree to compare with this one")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH", help="a source tree (repeatable)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=duration_argument, default=1.0,
                        help="seconds per server and round (or 1s, 500ms)")
    parser.add_argument("--callers", type=int, default=1, help="concurrent unary callers")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers and client to separate CPUs")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    trees: dict[str, Path] = {}
    if args.before is not None:
        trees["before"] = args.before.resolve()
    for spec in args.tree:
        name, _, path = spec.partition("=")
        if not name or not path:
            parser.error(f"--tree {spec!r}: expected NAME=PATH")
        trees[name] = Path(path).resolve()
    if not args.tree:
        trees["after"] = _THIS_TREE
    if args.rounds < 1 or args.duration < 0.1 or args.callers < 1:
        parser.error("--rounds >= 1, --duration >= 0.1 and --callers >= 1")
    result = run(trees, rounds=args.rounds, duration=args.duration, callers=args.callers, pin=not args.no_pin,
                 out=args.out)
    (args.out / "header-rule.json").write_text(json.dumps(result, indent=2))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
