"""A benchmark server process: ``python -m meshnode.bench.server --variant C --state-dir DIR``.

Variants (what the runner compares):

* ``A``: bare ``grpc.aio`` server, insecure port;
* ``B``: bare ``grpc.aio`` server, static ``ssl_server_credentials`` with
  client certificates required (the baseline);
* ``G``: ``B`` whose servicer authorizes by hand, as a careful grpcio user
  would write it: every call reads ``context.peer_identities()`` and checks
  it against an allowlist (the limit a framework is measured against);
* ``K``: ``G`` keyed on the caller's certificate instead of its SAN strings
  (``auth_context()``, an X509-SVID check once per certificate): the limit
  for a hand-written server that the typed-SAN bypass cannot fool;
* ``N``: ``meshnode run`` on a node.toml serving ``meshnode.demo:EchoService``
  (the demo service, not the bench one), its identity from the shared dev
  CA: a process of its own, whose CPU this process reads from ``/proc``;
* ``C``: a meshnode :class:`~meshnode.node.Node`: dynamic server credentials,
  authorization by SPIFFE ID, health and reflection;
* ``D``: ``C`` with tracing: an SDK ``TracerProvider`` whose spans go through
  a ``BatchSpanProcessor`` to an exporter that only counts them;
* ``M``: ``C`` with ``[telemetry] prometheus`` on (RPC metrics per caller,
  the /metrics endpoint; nothing scrapes it during the cells);
* ``P``: ``C`` whose policy is a file of 10,001 allow rules, the bench
  client's last (:mod:`meshnode.bench.policies`);
* ``Q``: ``P`` plus one deny rule with a header condition on the Echo
  service (what used to turn the decision cache off for every call);
* ``C3``: three ``C`` nodes in one process (ports ``main``, ``second``,
  ``third``): the endpoints of a peer with three replicas;
* ``J``: ``C`` with ``[authz] jwt = "required"``: every call must carry a
  JWT-SVID of the shared dev CA (its JWT key is the CA's, loaded from the
  state directory like the X.509 CA);
* ``H``: two bare servers on two ports, ``static`` (``ssl_server_credentials``)
  and ``dynamic`` (meshnode's :class:`~meshnode.credentials.ServerCredentials`),
  for the handshake rate;
* ``R``: a Node whose identity comes from a dev agent (``--agent-socket``),
  noting the client certificate of every call (rotation scenario).

Commands on stdin (see :mod:`meshnode.bench.protocol`): ``cpu`` -> this
process's CPU seconds (``time.process_time()``: every thread, grpc's too);
``seen`` -> client certificate serial -> first call carrying it (``R``);
``spans`` -> spans exported so far (``D``); ``metrics`` -> server calls
counted in the node's /metrics, read over HTTP (``M``); ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from meshnode.bench.meshnode_run import MeshnodeRun
from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN, BenchPKI
from meshnode.bench.protocol import pin_process, send_line
from meshnode.bench.service import AllowlistEcho, BenchEcho, CertificateAllowlistEcho, CertificateLog, LoggingEcho
from meshnode.demo.v1 import demo_pb2_grpc

__all__ = ["SERVER_VARIANTS", "main"]

SERVER_VARIANTS = ("A", "B", "C", "C3", "D", "G", "H", "J", "K", "M", "N", "P", "Q", "R")
_LISTEN = "127.0.0.1:0"

Commands = dict[str, Callable[[], dict[str, Any]]]


async def _bare(
    stack: contextlib.AsyncExitStack, credentials: grpc.ServerCredentials | None,
    servicer: demo_pb2_grpc.EchoServicer | None = None,
) -> int:
    server = grpc.aio.server()
    demo_pb2_grpc.add_EchoServicer_to_server(servicer or BenchEcho(), server)
    if credentials is None:
        port: int = server.add_insecure_port(_LISTEN)
    else:
        port = server.add_secure_port(_LISTEN, credentials)
    await server.start()
    stack.push_async_callback(server.stop, 0)
    return port


def _node_config(
    name: str, identity: dict[str, Any], policy: Path | None = None, jwt: bool = False,
    telemetry: dict[str, Any] | None = None,
) -> Any:
    from meshnode.config.node import node_config_from_dict

    authz: dict[str, Any] = {"allow": [CLIENT_ID], "audit": "on_deny"}
    if policy is not None:
        authz = {"policy": str(policy), "audit": "on_deny"}
    if jwt:
        authz["jwt"] = "required"
    return node_config_from_dict(
        {
            "node": {"name": name, "listen": _LISTEN, "mode": "development", "shutdown_grace": 0.0},
            "identity": {"trust_domain": TRUST_DOMAIN, **identity},
            "authz": authz,
            "telemetry": telemetry or {},
        },
        environ={},
    )


def _scraped_calls(url: str) -> int:
    """The server calls a node's /metrics counts (every status code), read as a scraper would."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as response:  # the node's own http URL
        text = response.read().decode()
    return int(sum(
        s.value for f in text_string_to_metric_families(text) if f.name == "rpc_server_call_duration_seconds"
        for s in f.samples if s.name.endswith("_count")
    ))


async def _node(
    stack: contextlib.AsyncExitStack, config: Any, service: object, *, source: Any = None, tracer_provider: Any = None
) -> Any:
    from meshnode.node import Node

    node = Node(config, services=[service], source=source, tracer_provider=tracer_provider)
    await node.start()
    stack.push_async_callback(node.stop, 0.0)
    return node


def _tracer_provider(stack: contextlib.AsyncExitStack) -> tuple[Any, Callable[[], int]]:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class CountingExporter(SpanExporter):
        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    stack.callback(provider.shutdown)

    def exported() -> int:
        provider.force_flush()
        return exporter.count

    return provider, exported


async def start(
    variant: str, state_dir: Path, agent_socket: str | None, stack: contextlib.AsyncExitStack, cpu: int | None = None
) -> tuple[dict[str, int], Commands]:
    """Start the variant's server(s); returns their ports and the extra commands."""
    commands: Commands = {}
    if variant == "A":
        return {"main": await _bare(stack, None)}, commands
    if variant == "R":
        if agent_socket is None:
            raise ValueError("variant R needs --agent-socket")
        log = CertificateLog()
        commands["seen"] = lambda: {"seen": log.first_seen()}
        config = _node_config("bench-rotation-server", {"source": "workload-api", "socket": agent_socket})
        return {"main": (await _node(stack, config, LoggingEcho(log))).port}, commands
    pki = BenchPKI(state_dir)
    if variant == "B":
        return {"main": await _bare(stack, pki.static_server_credentials())}, commands
    if variant == "G":
        return {"main": await _bare(stack, pki.static_server_credentials(), AllowlistEcho({CLIENT_ID}))}, commands
    if variant == "K":
        return {"main": await _bare(stack, pki.static_server_credentials(), CertificateAllowlistEcho({CLIENT_ID}))}, \
            commands
    if variant == "N":
        run = MeshnodeRun(state_dir, cpu)
        stack.callback(run.close)
        commands["cpu"] = run.cpu_seconds_answer
        return {"main": run.port}, commands
    if variant == "H":
        from meshnode.credentials import ServerCredentials
        from meshnode.identity.source import StaticSource

        dynamic = ServerCredentials(StaticSource(pki.snapshot(SERVER_ID)), {TRUST_DOMAIN})
        stack.callback(dynamic.close)
        return {
            "static": await _bare(stack, pki.static_server_credentials()),
            "dynamic": await _bare(stack, dynamic.credentials),
        }, commands
    if variant == "C3":
        from meshnode.identity.source import StaticSource

        ports: dict[str, int] = {}
        for i, name in enumerate(("main", "second", "third")):
            replica = StaticSource(pki.snapshot(SERVER_ID), description="bench server identity")
            stack.callback(replica.close)
            config = _node_config(f"bench-server-c3-{i}", {"source": "dev"})
            ports[name] = (await _node(stack, config, BenchEcho(), source=replica)).port
        return ports, commands
    if variant in ("C", "D", "J", "M", "P", "Q"):
        from meshnode.bench.policies import write_policy
        from meshnode.identity.source import StaticSource
        from meshnode.testing import ManualSource

        source: StaticSource = StaticSource(pki.snapshot(SERVER_ID), description="bench server identity")
        if variant == "J":  # a source on the shared dev CA: its JWT bundle verifies the client's tokens
            source.close()
            source = ManualSource(pki.ca, SERVER_ID, ttl=pki.ttl)
        stack.callback(source.close)
        provider = None
        if variant == "D":
            provider, exported = _tracer_provider(stack)
            commands["spans"] = lambda: {"spans": exported()}
        policy = None
        if variant in ("P", "Q"):
            policy = write_policy(state_dir / f"policy-{variant}.json", header_rule=variant == "Q")
        telemetry = {"prometheus": "127.0.0.1:0"} if variant == "M" else None
        config = _node_config(f"bench-server-{variant.lower()}", {"source": "dev"}, policy, jwt=variant == "J",
                              telemetry=telemetry)
        node = await _node(stack, config, BenchEcho(), source=source, tracer_provider=provider)
        if variant == "M":
            url = node.metrics_url
            commands["metrics"] = lambda: {"calls": _scraped_calls(url)}
        return {"main": node.port}, commands
    raise ValueError(f"unknown server variant {variant!r}; use one of {', '.join(SERVER_VARIANTS)}")


def _control(commands: Commands, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Answer the runner's commands on stdin; runs on its own thread, off the event loop."""
    try:
        for line in sys.stdin:
            try:
                cmd = json.loads(line).get("cmd")
            except ValueError:
                send_line({"error": f"not a JSON command: {line.strip()!r}"})
                continue
            if cmd == "quit":
                break
            handler = commands.get(cmd)
            if handler is None:
                send_line({"error": f"unknown command {cmd!r}; known: {', '.join(sorted(commands))}"})
                continue
            send_line(handler())
    finally:
        loop.call_soon_threadsafe(stop.set)


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        try:
            ports, commands = await start(args.variant, Path(args.state_dir), args.agent_socket, stack, args.cpu)
        except Exception as exc:  # reported to the runner, which quotes it
            send_line({"error": f"server {args.variant}: {type(exc).__name__}: {exc}"})
            return
        commands.setdefault("cpu", lambda: {"cpu": time.process_time()})
        cpus = pin_process(args.cpu)
        threading.Thread(target=_control, args=(commands, loop, stop), name="bench-control", daemon=True).start()
        send_line({"ready": True, "variant": args.variant, "ports": ports, "pid": os.getpid(), "cpus": cpus})
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.server", description=__doc__)
    parser.add_argument("--variant", required=True, choices=SERVER_VARIANTS)
    parser.add_argument("--state-dir", required=True, help="the shared dev CA's directory")
    parser.add_argument("--agent-socket", help="unix:///... Workload API socket (variant R)")
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU once it serves")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
