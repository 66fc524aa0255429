"""A ``meshnode run`` child of the scale benchmark: its config, its ready line, its RSS and CPU.

:class:`NodeProcess` starts ``python -m meshnode.cli run node.toml`` (what
the ``meshnode`` command runs) on a config written by :func:`write_config`,
waits for the ``meshnode: node NAME ready on HOST:PORT`` line and reads the
port from it (the node listens on port 0). Its resident memory and CPU time
are read from ``/proc/<pid>/status`` (VmRSS) and ``/proc/<pid>/stat``
(utime + stime, every thread), as ``ps`` and ``top`` do.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshnode.errors import MeshnodeError

__all__ = ["NodeProcess", "cpu_seconds", "machine_busy", "open_fds", "rss_kib", "write_config"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_READY = re.compile(r"^meshnode: node \S+ ready on [^ ]+:(\d+) as ")


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise MeshnodeError(f"bench: /proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / _TICKS, total / _TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML spelling for {type(value).__name__}")


def write_config(path: Path, tables: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``{"node": {...}, "peers.a": {...}}`` as node.toml; returns ``path``."""
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class NodeProcess:
    """``meshnode run CONFIG`` as a child; :meth:`wait_ready` returns its port. A context manager."""

    def __init__(self, config: Path, log_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in close()
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli", "run", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(env or {})},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-node-stdout", daemon=True)
        self._reader.start()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return ""
        return ("; its log ends with:\n    " + "\n    ".join(lines)) if lines else ""

    def wait_ready(self, timeout: float = 60.0) -> tuple[int, float]:
        """The port from the ready line, and the seconds from start to that line."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise MeshnodeError(f"bench: the node did not print its ready line within {timeout:g} s"
                                    f"{self._tail()}") from None
            if line is None:
                raise MeshnodeError(f"bench: the node exited with status {self._proc.wait()}{self._tail()}")
            found = _READY.search(line)
            if found is not None:
                return int(found.group(1)), time.monotonic() - self.started

    def close(self) -> None:
        """SIGTERM, then kill if it is still there after 10 s; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(1.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
