"""A `meshnode` subprocess whose output lines the test can wait for.

A node listens on port 0 and the test reads the port it got from its ready
line (:meth:`Meshnode.ready`): no port is picked before the process binds.
Use it as a context manager (or call :meth:`Meshnode.stop` in ``finally``):
cleanup kills what is left and never raises, so it cannot mask the failure
that ended the test.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent.parent


class Ended(AssertionError):
    """The process closed its output without printing the line waited for."""


class Meshnode:
    """``python -m meshnode.cli ARGS`` with stdout and stderr read line by line on threads."""

    def __init__(
        self, args: Sequence[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, own_group: bool = False
    ) -> None:
        """``own_group``: start it in a process group of its own, as a shell starts a foreground job
        (then ``os.killpg`` is what a terminal's Ctrl-C does)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli", *args], cwd=cwd, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=own_group,
        )
        self.lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        self._ended: set[str] = set()
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))
        self.lines.put((name, None))  # end of stream

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first new line (either stream) matching ``pattern``; fails with what was seen."""
        regex = re.compile(pattern)
        while True:
            if len(self._ended) == 2:
                raise Ended(f"the process ended without a line matching {pattern!r}; seen: {self.seen[-20:]}")
            try:
                stream, line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; seen: {self.seen[-20:]}") from None
            if line is None:
                self._ended.add(stream)
                continue
            self.seen.append((stream, line))
            if (found := regex.search(line)) is not None:
                return found

    def ready(self, name: str, timeout: float = 60.0) -> int:
        """Wait for ``meshnode: node NAME ready on HOST:PORT as ...`` (`meshnode run`); the port."""
        found = self.wait_line(rf"^meshnode: node {re.escape(name)} ready on [^ ]+:(\d+) as ", timeout)
        return int(found.group(1))

    def output(self) -> str:
        """Everything read so far plus what is left once the process has ended."""
        while True:
            try:
                stream, line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append((stream, line))
        return "\n".join(line for _, line in self.seen)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as an operator stops a node; its exit status (fails the test if it hangs)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout} s after SIGTERM; seen: {self.seen[-20:]}") from None

    def stop(self) -> int:
        """Cleanup: kill it if it still runs; never raises."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Meshnode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on, from /proc (Linux): for a program that binds
    port 0 and prints nothing about it, such as the README's greeter."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
