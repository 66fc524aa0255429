"""A local user flooding a unix socket: a forked child that drops to another uid and holds connections.

The child never execs (an unprivileged uid may not be able to run this
interpreter) and never touches grpc: it only opens sockets and answers
the parent's questions over a pipe. Needs root (to change uid).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from pathlib import Path

NOBODY = 65534


class UnixFlood:
    """``count`` idle connections to ``path`` from ``uid``, held until :meth:`close`."""

    def __init__(self, path: Path, count: int, uid: int = NOBODY) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            status = 1
            try:
                os.close(self._to_child)
                os.close(self._from_child)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                status = _child(path, count, to_child_r, from_child_w)
            finally:
                os._exit(status)
        os.close(to_child_r)
        os.close(from_child_w)
        self.pid = pid
        self.opened = int(self._ask(None))

    def _ask(self, question: str | None, timeout: float = 120) -> str:
        if question is not None:
            os.write(self._to_child, question.encode() + b"\n")
        ready, _, _ = select.select([self._from_child], [], [], timeout)
        if not ready:
            raise AssertionError(f"the flood child did not answer {question!r} in {timeout} s")
        answer = os.read(self._from_child, 1024).decode().strip()
        if not answer:
            raise AssertionError("the flood child died")
        return answer

    def still_open(self) -> int:
        """How many of the connections the server has not closed."""
        return int(self._ask("open"))

    def wait_open_at_most(self, n: int, timeout: float) -> int:
        """Wait until the server has closed all but ``n`` (or ``timeout`` seconds); how many are open."""
        return int(self._ask(f"wait {n} {timeout}", timeout + 30))

    def close(self) -> None:
        os.close(self._to_child)
        os.close(self._from_child)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


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
