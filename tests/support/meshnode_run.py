"""`meshnode run` as a child process on the in-process dev CA, and what a test needs around it."""

from __future__ import annotations

import json
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc

from meshnode.credentials import channel_credentials
from meshnode.devagent.ca import DevCA
from meshnode.spiffeid import dns_name_for
from meshnode.testing import issue_snapshot
from tests.support.processes import meshnode_command

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
_READY = re.compile(r"ready on [\d.]+:(\d+) ")


class NodeProcess:
    """``meshnode run`` for node beta (EchoService, allows alpha), listening on 127.0.0.1:0."""

    def __init__(
        self,
        workdir: Path,
        *,
        node_keys: str = "",
        sections: str = "",
        env: Mapping[str, str] | None = None,
        soft_nofile: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        config = workdir / "node.toml"
        config.write_text(
            f'[node]\nname = "beta"\nlisten = "127.0.0.1:0"\nservices = ["meshnode.demo:EchoService"]\n{node_keys}\n'
            f'[identity]\nsource = "dev"\ntrust_domain = "example.org"\nstate_dir = "{self.state_dir}"\n'
            f'[authz]\nallow = ["{ALPHA}"]\n{sections}\n'
        )
        self.stderr_path = workdir / "stderr.log"

        command = meshnode_command("run", str(config), soft_nofile=soft_nofile)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})},
            )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout=60)
        line = self.proc.stdout.readline().decode() if ready else ""
        found = _READY.search(line)
        if found is None:
            self.stop()
            raise AssertionError(f"meshnode run did not become ready: {line!r}\n{self.stderr()}")
        self.port = int(found.group(1))
        self.stdout_tail = b""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, wait, and keep what it printed on stdout after the ready line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        self.stdout_tail = out or b""
        return self.proc.returncode

    def caller_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials of alpha, from the node's dev CA (same state_dir)."""
        ca = DevCA("example.org", state_dir=self.state_dir)
        return channel_credentials(issue_snapshot(ca, ALPHA), "example.org")

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}", self.caller_credentials(),
            options=[("grpc.ssl_target_name_override", dns_name_for(BETA)), *options.items()],
        )

    def fd_limits(self) -> tuple[int, int]:
        """The node's (soft, hard) RLIMIT_NOFILE, read from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no 'Max open files' line in /proc/PID/limits")


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP connections that never send a byte (no ClientHello)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` (end of stream or reset) within ``timeout`` seconds;
    what it sends before (HTTP/2 settings, a GOAWAY) is read and dropped."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        pass
    return False


def wait_closed(socks: list[socket.socket], count: int, timeout: float) -> list[socket.socket]:
    """The sockets the server closed, once ``count`` of them are (or after ``timeout`` seconds)."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    while len(closed) < count and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            if closed_by_peer(by_fd[fd], 1):
                closed.append(by_fd[fd])
                poller.unregister(fd)
    return closed


def metric_points(stdout: bytes, name: str) -> Iterator[dict[str, object]]:
    """Data points of metric ``name`` in the JSON documents a console metrics exporter printed."""
    text = stdout.decode(errors="replace")
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at != -1:
        try:
            doc, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            at = text.find("{", at + 1)
            continue
        for rm in doc.get("resource_metrics", ()) if isinstance(doc, dict) else ():
            for sm in rm.get("scope_metrics", ()):
                for metric in sm.get("metrics", ()):
                    if metric.get("name") == name:
                        yield from metric.get("data", {}).get("data_points", ())
        at = text.find("{", end)


def counter_total(stdout: bytes, name: str, **attributes: str) -> int:
    """The last cumulative value of counter ``name`` with these attributes, summed over other attributes."""
    last: dict[str, int] = {}
    for point in metric_points(stdout, name):
        attrs = point.get("attributes", {})
        assert isinstance(attrs, dict)
        if all(attrs.get(k) == v for k, v in attributes.items()):
            last[json.dumps(attrs, sort_keys=True)] = int(str(point["value"]))
    return sum(last.values())
