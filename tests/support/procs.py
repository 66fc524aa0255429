"""A `meshnode` subprocess whose output lines the test can wait for."""

from __future__ import annotations

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

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()
