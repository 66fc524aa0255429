"""A peer as a service, for real: replicas, an impostor, a DNS name, a client node; each its own process.

* a dev agent (`meshnode agent`) hands out the identities: ``alpha`` (the
  client), ``beta`` (every replica: one SPIFFE ID, several workloads) and
  ``mallory`` (the impostor: a valid SVID of the same CA, another ID, with
  the DNS SAN of its own ID);
* replicas are ``meshnode run`` processes named ``beta-2``, ``beta-3``, ...
  on 127.0.0.2, 127.0.0.3, ... (Linux loopback needs no setup), all on one
  port: a DNS answer carries addresses, not ports. The first binds port 0;
  the port it got is the service's port. They serve ``Relay`` (answers with
  the node name) and ``tests.support.services:Stall``;
* a :class:`~tests.support.dns_server.DnsServer` answers for ``beta.test``;
* the client is ``python -m tests.support.lb_client`` (see there).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshnode.testing import short_tmpdir
from tests.support.agent_process import AgentProcess
from tests.support.dns_server import DnsServer
from tests.support.procs import ROOT, Meshnode

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
MALLORY = "spiffe://example.org/node/mallory"
NAME = "beta.test"
#: the impostor's address (replicas take 127.0.0.2 upwards)
IMPOSTOR_HOST = "127.0.0.9"
SERVICES = ("meshnode.demo:RelayService", "tests.support.services:Stall")


class Replica:
    """``meshnode run`` as one workload behind the service: node ``name`` on ``host:port``."""

    def __init__(self, mesh: Mesh, host: str, port: int, *, name: str, socket: str,
                 services: Sequence[str] = SERVICES, node_extra: str = "") -> None:
        """``node_extra``: more ``[node]`` lines."""
        self.host = host
        self.name = name
        config = mesh.workdir / f"{name}.toml"
        config.write_text(
            f'[node]\nname = "{name}"\nlisten = "{host}:{port}"\nshutdown_grace = 5.0\n{node_extra}\n'
            f'services = {json.dumps(list(services))}\n'
            f'[identity]\nsource = "workload-api"\nsocket = "unix://{mesh.workdir}/sockets/{socket}.sock"\n'
            f'[authz]\nallow = ["{ALPHA}"]\n'
        )
        self.process = Meshnode(["run", str(config)])
        self.port = self.process.ready(name)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no GOAWAY, connections just die."""
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.proc.wait(30)

    def stalled(self) -> int:
        """How many Stall calls this replica has entered so far."""
        self.process.output()
        return sum(1 for _, line in self.process.seen if line == "stall: entered")


class Client:
    """``python -m tests.support.lb_client``: a client node calling peer ``beta``."""

    def __init__(self, config: Path) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        self._err = open(self.stderr_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.lb_client", str(config)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
            env={**os.environ, "GRPC_VERBOSITY": "NONE"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        line = self._next(120)
        if line != "READY":
            raise AssertionError(f"the client node did not start: {line!r}\n{self.log()}")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the client node said nothing for {timeout} s\n{self.log()}") from None

    def ask(self, command: str, timeout: float = 180) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        while True:
            line = self._next(timeout)
            if line is None:
                raise AssertionError(f"the client node ended during {command!r}\n{self.log()}")
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[len("RESULT "):])
                return result

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_health_watched(self, endpoints: list[str], timeout: float = 60.0) -> None:
        """Wait until the node watches the health of every endpoint (spiffe-id peers: its own watches)."""
        deadline = time.monotonic() + timeout
        while not all(f"watching the health of endpoint {e} " in self.log() for e in endpoints):
            if time.monotonic() > deadline:
                raise AssertionError(f"health of {endpoints} not watched after {timeout} s\n{self.log()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._err.close()


class Mesh:
    """The agent, the DNS server, the replicas and the client of one test."""

    def __init__(self, workdir: Path, *, svid_ttl: int = 3600) -> None:
        self.workdir = workdir
        agent = workdir / "agent.toml"
        agent.write_text(
            f'trust_domain = "example.org"\nsocket_dir = "{workdir}/sockets"\nsvid_ttl = {svid_ttl}\n'
            f'[[entries]]\nname = "alpha"\nspiffe_id = "{ALPHA}"\n'
            f'[[entries]]\nname = "beta"\nspiffe_id = "{BETA}"\n'
            f'[[entries]]\nname = "mallory"\nspiffe_id = "{MALLORY}"\n'
        )
        self.agent = AgentProcess(agent)
        self.dns = DnsServer()
        self.replicas: dict[str, Replica] = {}
        self.impostor: Replica | None = None
        self.port = 0
        self.clients: list[Client] = []

    def replica(self, index: int, **kwargs: Any) -> Replica:
        """Start replica ``beta-<index>`` on 127.0.0.<index> (the service's port once one is known);
        ``kwargs``: :class:`Replica`'s ``services`` and ``node_extra``."""
        replica = Replica(self, f"127.0.0.{index}", self.port, name=f"beta-{index}", socket="beta", **kwargs)
        self.port = replica.port
        self.replicas[replica.name] = replica
        return replica

    def start_impostor(self) -> Replica:
        """``mallory``: a valid SVID of the same CA for another ID, on the service's port."""
        self.impostor = Replica(self, IMPOSTOR_HOST, self.port, name="mallory", socket="mallory")
        return self.impostor

    def answer(self, *hosts: str) -> None:
        """What the DNS server answers for beta.test from now on."""
        self.dns.set(NAME, hosts)

    def client(self, verify: str, *, endpoints: str | None = None, extra: str = "") -> Client:
        """A client node whose peer ``beta`` is the service; ``endpoints``: the TOML line naming them
        (default: ``address = "dns://<this DNS server>/beta.test:PORT"``)."""
        where = endpoints or f'address = "{self.dns.authority(NAME, self.port)}"'
        config = self.workdir / f"alpha-{len(self.clients)}.toml"
        config.write_text(
            f'[node]\nname = "alpha"\n'
            f'[identity]\nsource = "workload-api"\nsocket = "unix://{self.workdir}/sockets/alpha.sock"\n'
            f'[peers.beta]\n{where}\nspiffe_id = "{BETA}"\nverify = "{verify}"\n{extra}\n'
        )
        client = Client(config)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.stop()
        for replica in [*self.replicas.values(), *([self.impostor] if self.impostor else [])]:
            replica.process.stop()
        self.dns.close()
        self.agent.stop()


@contextmanager
def mesh(prefix: str = "mn-lb-", **kwargs: Any) -> Iterator[Mesh]:
    workdir = short_tmpdir(prefix)
    m = Mesh(workdir, **kwargs)
    try:
        yield m
    finally:
        m.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
