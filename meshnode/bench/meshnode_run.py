"""Variant ``N``: a ``meshnode run`` process, as a user starts it, serving the demo Echo service.

The bench server process of variant ``N`` starts it (a
:class:`~meshnode.bench.scale_node.NodeProcess`), waits for its ready line,
pins it to the server CPU and answers ``cpu`` with its CPU time: the sum
over its threads of ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds, where
``/proc/<pid>/stat`` counts 10 ms ticks: too coarse for a 0.6 s cell; grpc's
threads live as long as the server, so none is lost between two reads). Its
identity comes from the shared dev CA (``source = "dev"`` with the CA's
``state_dir``), so the bench client's certificate chains to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN
from meshnode.bench.scale_node import NodeProcess, write_config

__all__ = ["MeshnodeRun", "process_cpu_seconds"]


def process_cpu_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` (``schedstat``: nanoseconds, unlike ``stat``'s ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def _pin(pid: int, cpu: int | None) -> None:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except (ProcessLookupError, PermissionError):
            continue


class MeshnodeRun:
    """``meshnode run node.toml`` in a child process; ``port`` once it is ready."""

    def __init__(self, state_dir: Path, cpu: int | None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="mnb-run-"))
        config = write_config(self._dir / "node.toml", {
            "node": {"name": "bench-server-n", "listen": "127.0.0.1:0", "mode": "development",
                     "services": ["meshnode.demo:EchoService"], "shutdown_grace": 0.0},
            "identity": {"source": "dev", "trust_domain": TRUST_DOMAIN, "spiffe_id": SERVER_ID,
                         "state_dir": str(state_dir)},
            "authz": {"allow": [CLIENT_ID]},
        })
        self._node = NodeProcess(config, self._dir / "run.log")
        try:
            self.port, _ = self._node.wait_ready()
        except BaseException:
            self._node.close()  # its log stays in the directory, named by the error
            raise
        _pin(self._node.pid, cpu)

    def cpu_seconds_answer(self) -> dict[str, Any]:
        return {"cpu": process_cpu_seconds(self._node.pid)}

    def close(self) -> None:
        self._node.close()
        shutil.rmtree(self._dir, ignore_errors=True)
