"""What a JWT-SVID costs a server per call, split into carrying the header and validating it.

``python -m meshnode.bench.jwt_header [--rounds 12] [--duration 1.0] [--callers 1,16]``

Four ``meshnode run`` servers of this tree (EchoService, dev identity from
one shared dev CA), every thread pinned to CPU 0; this process calls them
over mTLS from CPU 1, each case for ``--duration`` seconds per round, the
order shifted every round; server CPU from ``/proc/PID/stat``:

* ``C``: ``[authz] jwt`` off, calls without a token;
* ``C+h``: the same server, calls carrying ``authorization: Bearer <JWT-SVID>``
  (not looked at): what carrying the header costs;
* ``C2+h``: a second, identical server, the same calls: how far two
  processes of the same configuration differ (the noise floor of the
  process-to-process comparison ``meshnode bench`` J/E makes);
* ``J+h``: ``[authz] jwt = "required"``, the same calls: every token validated
  (one signature at first, then cache hits).

Prints server CPU µs per call (median [IQR] over rounds) and the per-round
ratios to ``C`` and to ``C+h``. The per-call work in Python alone is timed
by ``python -m meshnode.bench.jwt_cost``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from meshnode.bench.stats import spread
from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import issue_snapshot

__all__ = ["main"]

CLIENT = "spiffe://example.org/bench/client"
_READY = re.compile(r"ready on [\d.]+:(\d+) ")
_SERVERS = {"C": False, "C2": False, "J": True}  # name -> jwt = "required"
_CASES = (("C", "C", False), ("C+h", "C", True), ("C2+h", "C2", True), ("J+h", "J", True))  # name, server, header


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpu: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.sched_setaffinity(int(tid), {cpu})


def _start(work: Path, name: str, jwt: bool, stack: contextlib.ExitStack) -> tuple[int, int]:
    config = work / f"{name}.toml"
    config.write_text(
        f'[node]\nname = "{name.lower()}"\nlisten = "127.0.0.1:0"\nservices = ["meshnode.demo:EchoService"]\n'
        f'shutdown_grace = 0.0\n[identity]\nsource = "dev"\ntrust_domain = "example.org"\n'
        f'state_dir = "{work / "ca"}"\n[authz]\nallow = ["{CLIENT}"]\n' + ('jwt = "required"\n' if jwt else "")
    )
    proc = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "run", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    stack.callback(proc.wait, 30)
    stack.callback(proc.terminate)
    assert proc.stdout is not None
    found = _READY.search(proc.stdout.readline())
    if found is None:
        raise SystemExit(f"jwt_header: server {name} did not start")
    return proc.pid, int(found.group(1))


async def _load(stub: Any, metadata: Any, seconds: float, callers: int) -> int:
    stop = time.monotonic() + seconds
    calls = 0

    async def caller() -> None:
        nonlocal calls
        while time.monotonic() < stop:
            await stub.Say(demo_pb2.SayRequest(text="x" * 64), metadata=metadata, timeout=10)
            calls += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return calls


async def _run(work: Path, rounds: int, duration: float, callers: list[int]) -> dict[str, Any]:
    ca = DevCA("example.org", state_dir=work / "ca")
    with contextlib.ExitStack() as stack:
        servers = {name: _start(work, name, jwt, stack) for name, jwt in _SERVERS.items()}
        for pid, _port in servers.values():
            _pin(pid, 0)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})
        credentials = channel_credentials(issue_snapshot(ca, CLIENT), "example.org")
        audiences = [f"spiffe://example.org/node/{name.lower()}" for name in servers]
        token = ca.sign_jwt(CLIENT, audiences, dt.timedelta(hours=2))
        header = (("authorization", f"Bearer {token}"),)
        channels = {
            name: grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=[
                ("grpc.ssl_target_name_override", dns_name_for(parse_spiffe_id(f"spiffe://example.org/node/"
                                                                                f"{name.lower()}")))])
            for name, (_pid, port) in servers.items()
        }
        stubs = {name: demo_pb2_grpc.EchoStub(channel) for name, channel in channels.items()}
        out: dict[str, Any] = {"token_chars": len(token), "callers": {}}
        for n in callers:
            cpu: dict[str, list[float]] = {case: [] for case, _, _ in _CASES}
            for _case, server, with_header in _CASES:  # warm-up
                await _load(stubs[server], header if with_header else None, min(duration, 0.5), n)
            for r in range(rounds):
                order = list(_CASES[r % len(_CASES):] + _CASES[: r % len(_CASES)])
                for case, server, with_header in order:
                    pid = servers[server][0]
                    before = _cpu(pid)
                    calls = await _load(stubs[server], header if with_header else None, duration, n)
                    cpu[case].append((_cpu(pid) - before) / calls * 1e6)
            out["callers"][n] = {
                "us_per_call": {case: spread(values) for case, values in cpu.items()},
                "vs_C": {case: spread([a / b for a, b in zip(v, cpu["C"], strict=True)]) for case, v in cpu.items()},
                "vs_C+h": {case: spread([a / b for a, b in zip(v, cpu["C+h"], strict=True)])
                           for case, v in cpu.items()},
            }
        for channel in channels.values():
            await channel.close()
    return out


def _fmt(s: dict[str, Any], digits: int) -> str:
    return "-" if s["median"] is None else f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.jwt_header", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per case and round")
    parser.add_argument("--callers", default="1,16", help="comma-separated concurrent callers")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mnj-", dir="/tmp"))
    try:
        result = asyncio.run(_run(work, args.rounds, args.duration, [int(c) for c in args.callers.split(",")]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"JWT-SVID of {result['token_chars']} characters; {args.rounds} rounds of {args.duration:g} s; "
          "median [IQR] over rounds; ratios per round")
    print("| callers | case | server CPU µs/call | vs C | vs C+h |")
    print("|---:|---|---:|---:|---:|")
    for n, row in result["callers"].items():
        for case, _, _ in _CASES:
            print(f"| {n} | {case} | {_fmt(row['us_per_call'][case], 0)} | {_fmt(row['vs_C'][case], 3)} "
                  f"| {_fmt(row['vs_C+h'][case], 3)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
