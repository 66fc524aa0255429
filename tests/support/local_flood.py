"""A local user flooding a unix socket: a process that drops to another uid and holds connections.

The flood runs in a fresh interpreter started as root (``python -m
tests.support.local_flood PATH COUNT UID``), never forked from the test
process: a fork of a process where gRPC's threads run can leave the child
stuck on a lock one of them held (gRPC logs "Other threads are currently
calling into gRPC, skipping fork() handlers"). The new process has no other
thread; it drops to ``uid`` after its imports (an unprivileged uid may not be
able to read this interpreter's files), only opens sockets, and answers the
parent's questions line by line on its stdin/stdout. Needs root.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NOBODY = 65534
_ROOT = Path(__file__).resolve().parents[2]


class UnixFlood:
    """``count`` idle connections to ``path`` from ``uid``, held until :meth:`close`."""

    def __init__(self, path: Path, count: int, uid: int = NOBODY) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.local_flood", str(path), str(count), str(uid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT, env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._to_child = self._proc.stdin.fileno()
        self._from_child = self._proc.stdout.fileno()
        self.pid = self._proc.pid
        self.opened = int(self._ask(None))

    def _ask(self, question: str | None, timeout: float = 120) -> str:
        if question is not None:
            os.write(self._to_child, question.encode() + b"\n")
        ready, _, _ = select.select([self._from_child], [], [], timeout)
        if not ready:
            raise AssertionError(f"the flood process did not answer {question!r} in {timeout} s")
        answer = os.read(self._from_child, 1024).decode().strip()
        if not answer:
            raise AssertionError(f"the flood process died (status {self._proc.poll()})")
        return answer

    def still_open(self) -> int:
        """How many of the connections the server has not closed."""
        return int(self._ask("open"))

    def wait_open_at_most(self, n: int, timeout: float) -> int:
        """Wait until the server has closed all but ``n`` (or ``timeout`` seconds); how many are open."""
        return int(self._ask(f"wait {n} {timeout}", timeout + 30))

    def close(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()


def _drop_to(uid: int) -> None:  # pragma: no cover - flood process only
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _child(path: Path, count: int, commands: int, answers: int) -> int:  # pragma: no cover - child only
    socks: list[socket.socket] = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
        except OSError:
            s.close()
            break
        socks.append(s)
    os.write(answers, f"{len(socks)}\n".encode())
    alive = {s.fileno(): s for s in socks}

    def reap(wait_ms: int) -> None:
        if not alive:
            return
        poller = select.poll()
        for fd in alive:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(wait_ms):
            s = alive[fd]
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                del alive[fd]
                s.close()

    buffered = b""
    while True:
        chunk = os.read(commands, 1024)  # blocks until the parent asks or closes
        if not chunk:
            return 0
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            words = line.decode().split()
            if words[0] == "open":
                reap(0)
            elif words[0] == "wait":
                target, deadline = int(words[1]), time.monotonic() + float(words[2])
                while len(alive) > target and time.monotonic() < deadline:
                    reap(100)
            os.write(answers, f"{len(alive)}\n".encode())


def main(argv: list[str]) -> int:  # pragma: no cover - flood process only
    path, count, uid = Path(argv[0]), int(argv[1]), int(argv[2])
    _drop_to(uid)
    return _child(path, count, sys.stdin.fileno(), sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
