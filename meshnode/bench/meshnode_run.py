"""Variant ``N``: a ``meshnode run`` process, as a user starts it, serving the demo Echo service.

The bench server process of variant ``N`` starts it, waits for its ready
line, pins it to the server CPU and answers ``cpu`` with its CPU time: the
sum over its threads of ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds;
grpc's threads live as long as the server, so none is lost between two
reads). Its identity comes from the shared dev CA (``source = "dev"`` with
the CA's ``state_dir``), so the bench client's certificate chains to it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN
from meshnode.errors import MeshnodeError

__all__ = ["MeshnodeRun", "process_cpu_seconds"]

_READY = re.compile(r"ready on 127\.0\.0\.1:(\d+) ")
_START_TIMEOUT = 60.0


def _config(state_dir: Path) -> str:
    return (
        '[node]\nname = "bench-server-n"\nlisten = "127.0.0.1:0"\nmode = "development"\n'
        'services = ["meshnode.demo:EchoService"]\nshutdown_grace = 0.0\n\n'
        f'[identity]\nsource = "dev"\ntrust_domain = "{TRUST_DOMAIN}"\nspiffe_id = "{SERVER_ID}"\n'
        f'state_dir = "{state_dir}"\n\n'
        f'[authz]\nallow = ["{CLIENT_ID}"]\n'
    )


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
        config = self._dir / "node.toml"
        config.write_text(_config(state_dir))
        self._log = open(self._dir / "run.log", "wb")  # closed in close()
        argv = [sys.executable, "-c", "import sys; from meshnode.cli import main; sys.exit(main())", "run",
                str(config)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        self.port = self._wait_ready()
        _pin(self._proc.pid, cpu)

    def _wait_ready(self) -> int:
        lines: queue.Queue[bytes] = queue.Queue()
        assert self._proc.stdout is not None
        stdout = self._proc.stdout

        def read() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(b"")  # it exited

        threading.Thread(target=read, name="bench-meshnode-run", daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=_START_TIMEOUT).decode(errors="replace")
            except queue.Empty:
                self.close()
                raise MeshnodeError(f"bench: meshnode run printed no ready line in {_START_TIMEOUT:.0f} s") from None
            if not line:
                self.close()
                raise MeshnodeError(f"bench: meshnode run exited before it was ready; see {self._dir / 'run.log'}")
            found = _READY.search(line)
            if found:
                return int(found.group(1))

    def cpu_seconds_answer(self) -> dict[str, Any]:
        return {"cpu": process_cpu_seconds(self._proc.pid)}

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if not self._log.closed:
            self._log.close()
            if self._proc.returncode in (0, -15):  # keep the log of a run that failed
                shutil.rmtree(self._dir, ignore_errors=True)
