"""One benchmark run: start the processes, interleave the variants over many rounds, then
measure handshakes and rotation under load.

Server processes are pinned to one CPU, client processes to another (when
there are two), each server variant in its own process, started once and
kept for the whole run. In every round each workload runs every variant
for ``duration`` seconds, one after another, the order shifted by one each
time, so slow drifts of the machine hit every variant alike. A cell's
server CPU time is the server process's ``time.process_time()`` delta over
the cell; ratios are taken per round against ``B`` of the same round and
workload, then summarised by median and interquartile range.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from meshnode.bench.pki import BenchPKI
from meshnode.bench.plan import VARIANTS, BenchSettings, Variant, Workload, spiffe_id_unavailable
from meshnode.bench.protocol import Child
from meshnode.bench.rotation import agent_config, run_rotations
from meshnode.bench.stats import ratio, spread, summarize_cells, summarize_handshakes
from meshnode.devagent.agent import DevAgentThread
from meshnode.errors import MeshnodeError

__all__ = ["run_bench"]

Progress = Callable[[str], None]
_START_TIMEOUT = 90.0
_HANDSHAKE_WARMUP = 10
#: clients whose failure to start skips a part of the run instead of failing it
_OPTIONAL_CLIENTS = {"F": "F", "F3": "F3", "RS": "rotation, verify=spiffe-id"}


def _cpu_plan(pin: bool) -> tuple[int | None, int | None]:
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


class _Run:
    def __init__(self, settings: BenchSettings, stack: contextlib.ExitStack, progress: Progress) -> None:
        self.settings = settings
        self.stack = stack
        self.progress = progress
        self.work = Path(tempfile.mkdtemp(prefix="mnb-", dir="/tmp"))  # unix socket paths stay short
        stack.callback(shutil.rmtree, self.work, True)
        self.logs = settings.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.ca_dir = self.work / "ca"
        BenchPKI(self.ca_dir)  # create the shared CA before any process loads it
        self.server_cpu, self.client_cpu = _cpu_plan(settings.pin)
        self.servers: dict[str, Child] = {}
        self.clients: dict[str, Child] = {}
        self.ports: dict[str, dict[str, int]] = {}
        self.skipped: dict[str, str] = {}
        self.variants: list[Variant] = list(settings.selected())
        self.calls_by_server: dict[str, int] = {}

    # -- processes ----------------------------------------------------------

    def _child(self, name: str, module: str, args: Iterable[str], cpu: int | None) -> Child:
        argv = [sys.executable, "-m", module, "--state-dir", str(self.ca_dir), *args]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        child = Child(name, argv, self.logs / f"{name.replace(' ', '-')}.log")
        self.stack.callback(child.close)
        return child

    def start_processes(self, agent: DevAgentThread) -> None:
        for name in ("F", "F3"):
            reason = spiffe_id_unavailable() if name in self.settings.variants else None
            if reason is not None:
                self.skipped[name] = reason
                self.variants = [v for v in self.variants if v.name != name]
        socket = agent.socket_address("server")
        for variant in sorted({v.server for v in self.variants} | {"H", "R"}):
            extra = ["--agent-socket", socket] if variant == "R" else []
            self.servers[variant] = self._child(
                f"server {variant}", "meshnode.bench.server", ["--variant", variant, *extra], self.server_cpu
            )
        for variant, child in self.servers.items():
            self.ports[variant] = child.receive(_START_TIMEOUT)["ports"]
        self.progress(f"servers ready: {', '.join(sorted(self.servers))}")

        def target(name: str, kind: str, server: str) -> str:
            return f"--target={name}={kind}@{self.address(server)}"

        shared = [target(v.name, v.kind, v.server) for v in self.variants if not v.own_process]
        groups = {"main": shared}
        groups.update({v.name: [target(v.name, v.kind, v.server)] for v in self.variants if v.own_process})
        for name, targets in groups.items():
            self.clients[name] = self._child(f"client {name}", "meshnode.bench.client", targets, self.client_cpu)
        rotating = {"R": "agent-dns"}
        if "F" in self.settings.variants and "F" not in self.skipped:
            rotating["RS"] = "agent-spiffe-id"
        for name, kind in rotating.items():
            self.clients[name] = self._child(
                f"client {name}", "meshnode.bench.client",
                [target(name, kind, "R"), "--agent-socket", agent.socket_address("client")], self.client_cpu,
            )
        for name, child in list(self.clients.items()):
            try:
                child.receive(_START_TIMEOUT)
            except MeshnodeError as exc:
                if name not in _OPTIONAL_CLIENTS:
                    raise
                self.skipped[_OPTIONAL_CLIENTS[name]] = str(exc)
                self.variants = [v for v in self.variants if v.name != name]
                child.close()
                del self.clients[name]
        self.progress(f"clients ready; variants {' '.join(v.name for v in self.variants)}")

    def address(self, server: str) -> str:
        """The peer address of a server variant: one endpoint, or an ``ipv4:`` list of its ports."""
        ports = self.ports[server]
        if len(ports) == 1 or server != "C3":
            return f"127.0.0.1:{ports['main']}"
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports.values())

    def _client_of(self, variant: Variant) -> Child:
        return self.clients[variant.name if variant.own_process else "main"]

    # -- throughput ---------------------------------------------------------

    def cell(self, variant: Variant, workload: Workload, duration: float) -> dict[str, Any]:
        server = self.servers[variant.server]
        before = server.request({"cmd": "cpu"})["cpu"]
        load = self._client_of(variant).request(
            {"cmd": "load", "target": variant.name, "unary": workload.unary, "stream": workload.stream,
             "long": workload.long, "duration": duration},
            timeout=duration + 60.0,
        )
        server_cpu = server.request({"cmd": "cpu"})["cpu"] - before
        calls = load["calls"]
        self.calls_by_server[variant.server] = self.calls_by_server.get(variant.server, 0) + calls
        return {
            "variant": variant.name,
            "workload": workload.name,
            "calls": calls,
            "messages": load["messages"],
            "errors": load["errors"],
            "error_samples": load["error_samples"],
            "elapsed_s": load["elapsed"],
            "calls_per_s": calls / load["elapsed"] if load["elapsed"] > 0 else None,
            "p50_ms": load["p50_ms"],
            "p99_ms": load["p99_ms"],
            "server_cpu_us": server_cpu / calls * 1e6 if calls else None,
            "client_cpu_us": load["client_cpu"] / calls * 1e6 if calls else None,
        }

    def throughput(self) -> dict[str, Any]:
        s = self.settings
        variants = self.variants
        if s.warmup > 0:
            for workload in s.workloads:
                for variant in variants:
                    self.cell(variant, workload, s.warmup)
        cells: list[dict[str, Any]] = []
        for r in range(s.rounds):
            self.progress(f"round {r + 1}/{s.rounds}")
            for w, workload in enumerate(s.workloads):
                shift = (r + w) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    cells.append({"round": r, **self.cell(variant, workload, s.duration)})
        return {
            "workloads": [{"name": w.name, "unary_callers": w.unary, "stream_callers": w.stream}
                          for w in s.workloads],
            "summary": summarize_cells(cells, [v.name for v in variants], [w.name for w in s.workloads]),
            "cells": cells,
        }

    # -- handshakes ---------------------------------------------------------

    def handshakes(self) -> dict[str, Any]:
        s = self.settings
        server, client = self.servers["H"], self.clients["main"]
        addresses = {kind: f"127.0.0.1:{port}" for kind, port in self.ports["H"].items()}
        for kind in ("static", "dynamic"):
            client.request({"cmd": "handshakes", "address": addresses[kind], "count": _HANDSHAKE_WARMUP})
        batches: list[dict[str, Any]] = []
        for r in range(s.handshake_rounds):
            for kind in ("static", "dynamic") if r % 2 == 0 else ("dynamic", "static"):
                before = server.request({"cmd": "cpu"})["cpu"]
                got = client.request({"cmd": "handshakes", "address": addresses[kind], "count": s.handshakes},
                                     timeout=60.0 + s.handshakes)
                cpu = server.request({"cmd": "cpu"})["cpu"] - before
                batches.append({
                    "round": r, "credentials": kind, "count": got["count"], "errors": got["errors"],
                    "error_samples": got["error_samples"], "elapsed_s": got["elapsed"],
                    "per_s": got["count"] / got["elapsed"],
                    "server_cpu_us": cpu / got["count"] * 1e6, "client_cpu_us": got["client_cpu"] / got["count"] * 1e6,
                })
        return {"per_batch": s.handshakes, **summarize_handshakes(batches), "batches": batches}

    # -- first calls ----------------------------------------------------------

    def first_calls(self) -> dict[str, Any]:
        """Fresh channel to first reply, per client kind, each kind in a short-lived process of its own."""
        out: dict[str, Any] = {}
        for variant in self.variants:
            if variant.server not in ("C", "C3"):
                continue
            address = self.address(variant.server)
            args = ["--first-calls", f"{variant.name}={variant.kind}@{address}",
                    "--count", str(self.settings.first_calls)]
            child = self._child(f"first calls {variant.name}", "meshnode.bench.client", args, self.client_cpu)
            try:
                times = child.receive(_START_TIMEOUT + 30.0 * self.settings.first_calls)["first_call_ms"]
            except MeshnodeError as exc:
                out[variant.name] = {"kind": variant.kind, "error": str(exc)}
                continue
            finally:
                child.close()
            out[variant.name] = {"kind": variant.kind, "ms": spread(times), "samples": times}
        return out

    # -- rotation and tracing -------------------------------------------------

    def rotation(self, agent: DevAgentThread) -> dict[str, Any]:
        s = self.settings
        self.progress(f"rotation under load, verify=dns: {s.rotations} rotations ({s.ca_rotations} of the CA)")
        return run_rotations(
            agent, self.servers["R"], self.clients["R"], target="R", rotations=s.rotations,
            ca_rotations=s.ca_rotations, interval=s.rotation_interval, callers=s.rotation_callers,
        )

    def rotation_spiffe_id(self, agent: DevAgentThread) -> dict[str, Any] | None:
        """The same through a spiffe-id channel: the node's control plane points the Clusters at a fresh
        certificate provider slot, whose new provider reads the new files at once (:mod:`meshnode.xds.slots`)."""
        if "RS" not in self.clients:
            return None
        s = self.settings
        self.progress(f"rotation under load, verify=spiffe-id: {s.spiffe_id_rotations} rotations")
        return run_rotations(
            agent, self.servers["R"], self.clients["RS"], target="RS", rotations=s.spiffe_id_rotations,
            ca_rotations=0, interval=s.spiffe_id_rotation_interval, callers=s.rotation_callers,
        )

    def metrics(self) -> dict[str, Any] | None:
        """What M's /metrics counted against the calls the clients made of it (warm-up included)."""
        if "M" not in self.servers:
            return None
        counted = self.servers["M"].request({"cmd": "metrics"})["calls"]
        return {"calls_counted": counted, "calls_made": self.calls_by_server.get("M", 0)}

    def tracing(self) -> dict[str, Any] | None:
        if "D" not in self.servers:
            return None
        spans = self.servers["D"].request({"cmd": "spans"})["spans"]
        calls = self.calls_by_server.get("D", 0)
        return {"spans_exported": spans, "calls": calls, "spans_per_call": ratio(spans, calls)}


def _machine(run: _Run) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "server_cpu": run.server_cpu,
        "client_cpu": run.client_cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
    }


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the benchmark; returns every raw number and the summaries (see :mod:`meshnode.bench.report`)."""
    say = progress or (lambda _message: None)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        run = _Run(settings, stack, say)
        agent = stack.enter_context(DevAgentThread(agent_config(run.work / "agent")))
        run.start_processes(agent)
        throughput = run.throughput()
        say("first calls on new channels")
        first_calls = run.first_calls()
        say("handshakes")
        handshakes = run.handshakes()
        rotation = run.rotation(agent)
        rotation_spiffe_id = run.rotation_spiffe_id(agent)
        tracing = run.tracing()
        metrics = run.metrics()
        variants = {v.name: v.description for v in VARIANTS if v in run.variants}
        return {
            "meshnode_bench": 1,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": _machine(run),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()},
            "variants": variants,
            "skipped": {name: reason for name, reason in run.skipped.items()},
            "first_calls": first_calls,
            "throughput": throughput,
            "handshakes": handshakes,
            "rotation": rotation,
            "rotation_spiffe_id": rotation_spiffe_id,
            "tracing": tracing,
            "metrics": metrics,
            "elapsed_s": time.monotonic() - began,
        }
    raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)
