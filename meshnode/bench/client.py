"""A benchmark client process: ``python -m meshnode.bench.client --target C=mtls@127.0.0.1:7001 ...``.

Each ``--target NAME=KIND@ADDRESS`` is one channel to one server, opened,
warmed (first call) and kept for the whole run, so rounds measure calls,
not connection set-up. Kinds:

* ``insecure``: bare ``grpc.aio.insecure_channel``;
* ``mtls``: bare ``grpc.aio.secure_channel`` with an SVID of the shared CA
  and ``grpc.ssl_target_name_override`` (what a grpcio user writes by hand);
* ``node-dns`` / ``node-spiffe-id``: a client-side meshnode Node whose
  ``[peers.bench]`` has ``verify = "dns"`` / ``"spiffe-id"``, identity from
  the shared CA; calls go through ``node.stub("bench", ...)``;
* ``node-dns-jwt``: ``node-dns`` with ``jwt = true``: every call carries a
  JWT-SVID signed by the shared CA (fetched once, renewed at half-life);
* ``agent-dns`` / ``agent-spiffe-id``: the same with the identity from the dev
  agent at ``--agent-socket`` (rotation scenario).

spiffe-id channels set gRPC's process-wide xDS bootstrap: give them a process
of their own. Commands on stdin (see :mod:`meshnode.bench.protocol`):
``load`` (see :func:`meshnode.bench.load.run_load`), ``handshakes`` (open
``count`` fresh mTLS connections one after another: channel, one call,
close), ``quit``.

``--first-calls NAME=KIND@ADDRESS --count N`` instead times N first calls,
each on a fresh channel (and, for the node kinds, a fresh client Node),
prints them as the ready line and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from meshnode.bench.load import run_load
from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN, BenchPKI, client_options
from meshnode.bench.protocol import pin_process, send_line
from meshnode.bench.service import REQUEST
from meshnode.demo.v1 import demo_pb2_grpc

__all__ = ["TARGET_KINDS", "main"]

TARGET_KINDS = ("insecure", "mtls", "node-dns", "node-spiffe-id", "node-dns-jwt", "agent-dns", "agent-spiffe-id")
_FIRST_CALL_TIMEOUT = 15.0
_NODE_KINDS = ("node-dns", "node-spiffe-id", "node-dns-jwt", "agent-dns", "agent-spiffe-id")


class Client:
    """The channels of one client process and the commands it runs on them."""

    def __init__(self, state_dir: Path, agent_socket: str | None) -> None:
        self._state_dir = state_dir
        self._agent_socket = agent_socket
        self._pki: BenchPKI | None = None
        self._credentials: grpc.ChannelCredentials | None = None
        self.stubs: dict[str, Any] = {}
        self.stack = contextlib.AsyncExitStack()

    @property
    def credentials(self) -> grpc.ChannelCredentials:
        if self._credentials is None:
            self._pki = BenchPKI(self._state_dir)
            self._credentials = self._pki.client_credentials()
        return self._credentials

    def _mtls_channel(self, address: str, *, fresh: bool = False) -> grpc.aio.Channel:
        options = client_options()
        if fresh:  # a connection of its own: no subchannel shared with other channels of the process
            options.append(("grpc.use_local_subchannel_pool", 1))
        return grpc.aio.secure_channel(address, self.credentials, options=options)

    async def open(self, name: str, kind: str, address: str) -> None:
        """Open the target's channel for the whole run and make its first call."""
        if kind == "insecure":
            channel = grpc.aio.insecure_channel(address)
            self.stack.push_async_callback(channel.close)
            stub: Any = demo_pb2_grpc.EchoStub(channel)
        elif kind == "mtls":
            channel = self._mtls_channel(address)
            self.stack.push_async_callback(channel.close)
            stub = demo_pb2_grpc.EchoStub(channel)
        elif kind in _NODE_KINDS:
            node = await self.stack.enter_async_context(self._node(name, kind, address))
            stub = node.stub("bench", demo_pb2_grpc.EchoStub)
        else:
            raise ValueError(f"unknown target kind {kind!r}; use one of {', '.join(TARGET_KINDS)}")
        await stub.Say(REQUEST, timeout=_FIRST_CALL_TIMEOUT, wait_for_ready=True)
        self.stubs[name] = stub

    @contextlib.asynccontextmanager
    async def _node(self, name: str, kind: str, address: str) -> AsyncIterator[Any]:
        """A started client Node whose peer ``bench`` is ``address``; stopped (and its source closed) on exit."""
        from meshnode.config.node import node_config_from_dict
        from meshnode.identity.source import StaticSource
        from meshnode.node import Node

        origin, _, verify = kind.partition("-")  # "agent-spiffe-id", "node-dns-jwt"
        jwt = verify.endswith("-jwt")
        verify = verify.removesuffix("-jwt")
        source: Any = None
        if origin == "agent":
            if self._agent_socket is None:
                raise ValueError(f"target {name}: kind {kind} needs --agent-socket")
            identity: dict[str, Any] = {"source": "workload-api", "socket": self._agent_socket}
        else:
            identity = {"source": "dev"}
            self._pki = self._pki or BenchPKI(self._state_dir)
            if jwt:  # a source on the shared dev CA: the node signs its JWT-SVIDs with it
                from meshnode.testing import ManualSource

                source = ManualSource(self._pki.ca, CLIENT_ID, ttl=self._pki.ttl)
            else:
                source = StaticSource(self._pki.snapshot(CLIENT_ID), description="bench client identity")
        config = node_config_from_dict(
            {
                "node": {"name": f"bench-client-{name.lower()}", "listen": "127.0.0.1:0", "mode": "development",
                         "shutdown_grace": 0.0},
                "identity": {"trust_domain": TRUST_DOMAIN, **identity},
                "authz": {"allow": [SERVER_ID]},
                "peers": {"bench": {"address": address, "spiffe_id": SERVER_ID, "verify": verify,
                                    **({"jwt": True} if jwt else {})}},
            },
            environ={},
        )
        node = Node(config, source=source)
        try:
            await node.start()
            yield node
        finally:
            await node.stop(0.0)
            if source is not None:
                source.close()

    async def first_calls(self, kind: str, address: str, count: int) -> list[float]:
        """Milliseconds from a new channel to its first reply, ``count`` times, one fresh channel each.

        Node kinds start a fresh client Node each time (not timed): the time
        runs from ``node.stub()`` to the reply, as an application sees it.
        """
        times: list[float] = []
        for i in range(count):
            if kind == "mtls":
                start = time.monotonic()
                channel = self._mtls_channel(address, fresh=True)
                try:
                    await demo_pb2_grpc.EchoStub(channel).Say(REQUEST, timeout=_FIRST_CALL_TIMEOUT)
                    times.append((time.monotonic() - start) * 1e3)
                finally:
                    await channel.close()
                continue
            async with self._node(f"first-{i}", kind, address) as node:
                start = time.monotonic()
                stub = node.stub("bench", demo_pb2_grpc.EchoStub)
                await stub.Say(REQUEST, timeout=_FIRST_CALL_TIMEOUT, wait_for_ready=True)
                times.append((time.monotonic() - start) * 1e3)
        return times

    async def load(self, command: dict[str, Any]) -> dict[str, Any]:
        return await run_load(
            self.stubs[command["target"]],
            unary=int(command.get("unary", 0)),
            stream=int(command.get("stream", 0)),
            long=bool(command.get("long", False)),
            duration=float(command["duration"]),
            window=float(command.get("window", 0.0)),
        )

    async def handshakes(self, command: dict[str, Any]) -> dict[str, Any]:
        """``count`` new connections in a row: each a fresh channel (own subchannel pool), one call, close."""
        address, count = command["address"], int(command["count"])
        errors: list[str] = []
        cpu_before, begin = time.process_time(), time.monotonic()
        for _ in range(count):
            channel = self._mtls_channel(address, fresh=True)
            try:
                await demo_pb2_grpc.EchoStub(channel).Say(REQUEST, timeout=10.0)
            except grpc.aio.AioRpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")
            finally:
                await channel.close()
        elapsed = time.monotonic() - begin
        return {
            "count": count, "elapsed": elapsed, "errors": len(errors), "error_samples": sorted(set(errors))[:5],
            "client_cpu": time.process_time() - cpu_before,
        }


async def _commands(client: Client) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
        "load": client.load,
        "handshakes": client.handshakes,
    }
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        try:
            command = json.loads(line)
        except ValueError:
            send_line({"error": f"not a JSON command: {line.strip()!r}"})
            continue
        cmd = command.get("cmd")
        if cmd == "quit":
            return
        handler = handlers.get(cmd)
        if handler is None:
            send_line({"error": f"unknown command {cmd!r}; known: {', '.join(sorted(handlers))}"})
            continue
        try:
            send_line(await handler(command))
        except Exception as exc:
            send_line({"error": f"{cmd}: {type(exc).__name__}: {exc}"})


def _target(spec: str) -> tuple[str, str, str]:
    name, eq, rest = spec.partition("=")
    kind, at, address = rest.partition("@")
    if not (eq and at and name and address):
        raise argparse.ArgumentTypeError(f"--target {spec!r} must look like NAME=KIND@HOST:PORT")
    return name, kind, address


async def run(args: argparse.Namespace) -> None:
    client = Client(Path(args.state_dir), args.agent_socket)
    async with client.stack:
        if args.first_calls is not None:
            _name, kind, address = args.first_calls
            try:
                times = await client.first_calls(kind, address, args.count)
            except Exception as exc:
                send_line({"error": f"client: first calls through {kind}: {type(exc).__name__}: {exc}"})
                return
            send_line({"ready": True, "first_call_ms": times})
            return
        for name, kind, address in args.target:
            try:
                await client.open(name, kind, address)
            except Exception as exc:  # reported to the runner, which quotes it
                send_line({"error": f"client: opening target {name}: {type(exc).__name__}: {exc}"})
                return
        cpus = pin_process(args.cpu)
        send_line({"ready": True, "targets": sorted(client.stubs), "cpus": cpus})
        await _commands(client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.client", description=__doc__)
    parser.add_argument("--target", action="append", type=_target, default=[], help="NAME=KIND@HOST:PORT")
    parser.add_argument("--first-calls", type=_target, metavar="NAME=KIND@HOST:PORT",
                        help="only time --count first calls on fresh channels of this kind, print them and exit")
    parser.add_argument("--count", type=int, default=5, help="with --first-calls: how many")
    parser.add_argument("--state-dir", required=True, help="the shared dev CA's directory")
    parser.add_argument("--agent-socket", help="unix:///... Workload API socket (agent-* kinds)")
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU once its channels are open")
    args = parser.parse_args(argv)
    if not args.target and args.first_calls is None:
        parser.error("give --target (one or more) or --first-calls")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cpu is not None and args.first_calls is not None:
        pin_process(args.cpu)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
