"""Linux network namespaces as test hosts: one bridge, one namespace per host.

Needs root and iproute2. Every name carries the creating process's id, and
:meth:`Hosts.close` removes everything it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def available() -> str | None:
    """None when network namespaces can be used here, else why not."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"mnprobe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` fails here: {exc.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Hosts:
    """Namespaces on one bridge; host i has address 10.<x>.<y>.i, the bridge .254."""

    names: tuple[str, ...]
    tag: str = field(default_factory=lambda: f"{os.getpid() % 10000}")
    made: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = f"10.{200 + pid % 50}.{pid % 250}"
        self.bridge = f"mnbr{self.tag}"

    def ns(self, name: str) -> str:
        return f"mn{self.tag}{name}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def _link(self, name: str) -> str:
        return f"mn{self.tag}{name[:1]}0"  # root side of the host's veth

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for name in self.names:
            ns = self.ns(name)
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self.made.append(("netns", ns))
            outer = self._link(name)
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made.append(("link", outer))
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{self.address(name)}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)
            _ip("link", "set", "lo", "up", ns=ns)

    def cut(self, name: str) -> None:
        """Take the host's network link down (no packets in or out)."""
        _ip("link", "set", "eth0", "down", ns=self.ns(name))

    def restore(self, name: str) -> None:
        _ip("link", "set", "eth0", "up", ns=self.ns(name))

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]

    def close(self) -> None:
        for kind, what in reversed(self.made):
            if kind == "netns":
                subprocess.run(["ip", "netns", "del", what], capture_output=True)
            else:
                subprocess.run(["ip", "link", "del", what], capture_output=True)
        self.made.clear()

    def __enter__(self) -> Hosts:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
