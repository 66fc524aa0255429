"""A local mesh of real processes: the dev agent and three ``meshnode run`` nodes.

Everything lives in one work directory (configs, sockets, CA state, logs,
JSON-lines traces). :class:`LocalMesh` writes the configs, starts the
processes, waits for their ready lines, and on close stops them (SIGTERM,
then SIGKILL after a grace) and removes the directory unless asked to keep it.

The policy: the demo client may call alpha; alpha may call beta; gamma
takes a gRFC A43 policy file that lets beta (only) call Relay and Echo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from meshnode.errors import MeshnodeError

__all__ = ["CLIENT_ID", "NODES", "LocalMesh", "node_id"]

TRUST_DOMAIN = "example.org"
NODES = ("alpha", "beta", "gamma")
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/demo/client"
SERVICES = '["meshnode.demo:EchoService", "meshnode.demo:RelayService"]'


def node_id(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/node/{name}"


GAMMA_POLICY = {
    "name": "gamma",
    "allow_rules": [
        {
            "name": "beta-may-relay-and-echo",
            "source": {"principals": [node_id("beta")]},
            "request": {"paths": ["/meshnode.demo.v1.Relay/Forward", "/meshnode.demo.v1.Echo/*"]},
        },
        {
            "name": "mesh-may-check-health",
            "source": {"principals": [f"spiffe://{TRUST_DOMAIN}/node/*"]},
            "request": {"paths": ["/grpc.health.v1.Health/*"]},
        },
    ],
}


class MeshError(MeshnodeError):
    """A demo process failed to start or died."""


@dataclass
class LocalMesh:
    verify: str = "spiffe-id"
    workdir: Path | None = None
    keep: bool = False
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # node -> its /metrics URL

    def __post_init__(self) -> None:
        self.root = Path(self.workdir) if self.workdir else Path(tempfile.mkdtemp(prefix="meshnode-demo-", dir="/tmp"))
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("sockets", "state", "logs", "traces"):
            (self.root / sub).mkdir(exist_ok=True)
        # nodes listen on port 0 and report their port in their ready line (see start())

    # -- layout -------------------------------------------------------------

    def socket(self, name: str) -> str:
        return f"unix://{self.root / 'sockets' / name}.sock"

    def config_path(self, name: str) -> Path:
        return self.root / f"{name}.toml"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def trace_files(self) -> list[Path]:
        return sorted((self.root / "traces").glob("*.jsonl"))

    def ports_file(self) -> Path:
        """Where the ports of a running mesh are written (for `meshnode demo call`)."""
        return self.root / "ports.json"

    def write_configs(self) -> None:
        """The agent's config and gamma's policy; node configs are written as each node starts."""
        map_dns = "true" if self.verify == "dns" else "false"  # spiffe-id mode needs no DNS SAN at all
        entries = [(n, node_id(n)) for n in NODES] + [("client", CLIENT_ID)]
        agent = [
            f'trust_domain = "{TRUST_DOMAIN}"',
            f'socket_dir = "{self.root / "sockets"}"',
            f'state_dir = "{self.root / "state"}"',
            "svid_ttl = 3600",
            "ca_overlap = 1.5",
        ]
        for name, sid in entries:
            agent += ["", "[[entries]]", f'name = "{name}"', f'spiffe_id = "{sid}"', f"map_dns = {map_dns}"]
        (self.root / "agent.toml").write_text("\n".join(agent) + "\n")
        (self.root / "gamma-policy.json").write_text(json.dumps(GAMMA_POLICY, indent=2) + "\n")

    def write_node_config(self, name: str) -> None:
        """``name``'s node.toml: it listens on port 0; its peer must be up already (its port known)."""
        authz = {
            "alpha": f'allow = ["{CLIENT_ID}"]',
            "beta": f'allow = ["{node_id("alpha")}"]',
            "gamma": 'policy = "gamma-policy.json"',
        }
        next_peer = {"alpha": "beta", "beta": "gamma", "gamma": None}
        text = [
            "[node]", f'name = "{name}"', 'listen = "127.0.0.1:0"', 'mode = "development"',
            f"services = {SERVICES}", "shutdown_grace = 2.0", f'peer_verify = "{self.verify}"', "",
            "[identity]", 'source = "workload-api"', f'socket = "{self.socket(name)}"',
            f'trust_domain = "{TRUST_DOMAIN}"', "timeout = 10", "",
            "[authz]", authz[name], 'audit = "on_deny"', "",
            "[telemetry]", 'exporter = "jsonl"', f'jsonl_path = "traces/{name}.jsonl"',
            'prometheus = "127.0.0.1:0"', "",
        ]
        peer = next_peer[name]
        if peer:
            text += [f"[peers.{peer}]", f'address = "{self.address(peer)}"', f'spiffe_id = "{node_id(peer)}"']
        self.config_path(name).write_text("\n".join(text) + "\n")

    # -- processes ----------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "logs" / f"{name}.log", "wb")
        env = dict(os.environ, OTEL_BSP_SCHEDULE_DELAY="100", PYTHONUNBUFFERED="1")
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=self.root,
            # a session of its own: the terminal's Ctrl-C reaches only the demo, which stops each child once
            start_new_session=True,
        )
        log.close()

    def _wait_ready(self, name: str, marker: str, timeout: float) -> str:
        path = self.root / "logs" / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace") if path.exists() else ""
            for line in text.splitlines():
                if marker in line:
                    return line
            if self.procs[name].poll() is not None:
                raise MeshError(f"demo: {name} exited with {self.procs[name].returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        raise MeshError(f"demo: {name} did not get ready within {timeout:.0f} s; see {path}")

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        """Start the agent, then the nodes; returns each process's ready line."""
        self.write_configs()
        ready = {}
        self._spawn("agent", ["agent", "--config", str(self.root / "agent.toml")])
        ready["agent"] = self._wait_ready("agent", "meshnode agent: ready", timeout)
        for name in reversed(NODES):  # each node's peer is up before it: gamma, beta, alpha
            self.write_node_config(name)
            self._spawn(name, ["run", str(self.config_path(name))])
            ready[name] = self._wait_ready(name, f"node {name} ready", timeout)
            found = re.search(r" ready on [^ ]+:(\d+) ", ready[name])
            if found is None:
                raise MeshError(f"demo: {name}'s ready line names no port: {ready[name]!r}")
            self.ports[name] = int(found.group(1))
            metrics = re.search(r" metrics on (http://\S+)", self._wait_ready(name, f"node {name} metrics on", timeout))
            if metrics is not None:
                self.metrics[name] = metrics.group(1)
        self.ports_file().write_text(json.dumps(self.ports) + "\n")
        return ready

    def signal_agent(self, sig: signal.Signals) -> None:
        self.procs["agent"].send_signal(sig)

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def close(self) -> dict[str, int]:
        """Stop every process (nodes first); returns their exit codes."""
        codes: dict[str, int] = {}
        order = [n for n in (*NODES, "agent") if n in self.procs]
        for name in order:
            if self.procs[name].poll() is None:
                self.procs[name].send_signal(signal.SIGTERM)
        for name in order:
            try:
                codes[name] = self.procs[name].wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.procs[name].kill()
                codes[name] = self.procs[name].wait()
        self.procs.clear()
        if not self.keep:  # the mesh is gone: remove its sockets and the dev CA; keep traces, logs, configs
            for sub in ("sockets", "state"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
            self.ports_file().unlink(missing_ok=True)
        return codes

    def __enter__(self) -> LocalMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
