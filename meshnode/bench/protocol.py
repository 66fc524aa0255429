"""How the runner talks to its server and client processes: JSON lines over stdin/stdout.

A child prints one ``{"ready": ...}`` line when it serves (or one
``{"error": ...}`` line and exits), then answers each command line with
exactly one line. End of stdin or ``{"cmd": "quit"}`` stops it. Its
stderr goes to a log file the runner quotes when the child fails.

Children pin themselves (every thread, :func:`pin_process`) after start-up,
so importing grpc in parallel does not count against the measurement.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from meshnode.errors import MeshnodeError

__all__ = ["Child", "pin_process", "send_line"]

_QUIT_TIMEOUT = 10.0
_write_lock = threading.Lock()


def send_line(message: dict[str, Any], stream: IO[str] | None = None) -> None:
    """Child side: write one JSON line to stdout (thread-safe)."""
    out = stream or sys.stdout
    with _write_lock:
        out.write(json.dumps(message) + "\n")
        out.flush()


def pin_process(cpu: int | None) -> list[int]:
    """Child side: run every thread of this process (and those it starts later) on ``cpu``.

    ``os.sched_setaffinity(0, ...)`` moves only the calling thread, and grpc
    has started its own by now, so each task of the process is moved.
    """
    if not hasattr(os, "sched_setaffinity"):  # not Linux: run unpinned
        return []
    if cpu is None:
        return sorted(os.sched_getaffinity(0))
    cpus = {cpu}
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            continue
    return sorted(os.sched_getaffinity(0))


class Child:
    """A benchmark process started by the runner; :meth:`request` sends a command and returns the answer."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in close()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"bench-{name}", daemon=True)
        self._reader.start()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        lines = text.splitlines()[-15:]
        return ("; its log ends with:\n    " + "\n    ".join(lines)) if lines else ""

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise MeshnodeError(
                f"bench: the {self.name} process did not answer within {timeout:g} s{self._tail()}"
            ) from None
        if line is None:
            status = self._proc.wait()
            raise MeshnodeError(f"bench: the {self.name} process exited with status {status}{self._tail()}")
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise MeshnodeError(f"bench: the {self.name} process wrote a line that is not JSON: {line!r}") from None
        if "error" in message:
            raise MeshnodeError(f"bench: the {self.name} process failed: {message['error']}{self._tail()}")
        return message

    def send(self, message: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write((json.dumps(message) + "\n").encode())
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise MeshnodeError(f"bench: the {self.name} process is gone{self._tail()}") from None

    def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.send(message)
        return self.receive(timeout)

    def close(self) -> None:
        """Ask the process to quit, then terminate or kill it; idempotent."""
        if self._closed:
            return
        self._closed = True
        stdin = self._proc.stdin
        try:
            if stdin is not None:
                stdin.write(b'{"cmd": "quit"}\n')
                stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass
        try:
            self._proc.wait(_QUIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            try:
                self._proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(1.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._log.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
