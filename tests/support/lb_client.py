"""A client node in its own process, driven line by line: ``python -m tests.support.lb_client NODE.TOML``.

It runs a real :class:`~meshnode.node.Node` (client only) from the config
and calls its peer ``beta`` (``Relay.Forward`` with an empty route: the
replica that served the call answers with its node name), so a test counts
calls per replica from what the replicas themselves said. gRPC reads one
xDS bootstrap per process, hence a process per client node.

Commands (stdin, one per line), each answered by one line
``RESULT <json>`` on stdout:

* ``calls N``: N calls one after the other -> ``{"counts": {node: n}, "failed": [...]}``;
* ``load C``: start C concurrent callers (calls without end, 10 s deadline each);
* ``mark``: what the callers saw since the last mark (counts, failures, calls);
* ``stop``: stop the callers; what they saw since the last mark;
* ``stall N``: start N ``Echo.Say`` calls to a replica service that never answers
  (``tests.support.services:Stall``) -> ``{}``; ``stalled``: how they ended so far;
* ``metric``: the value of ``meshnode.peer.endpoint_rejected`` (in-memory reader);
* ``serial``: one ``Echo.Say`` to a replica serving ``tests.support.services:CallerSerial``
  -> ``{"serial": the client certificate serial it saw}`` or ``{"failed": failure}``;
* ``identity``: serial of the client's SVID and how many it has had;
* ``quit``.

A failure is ``[code, details]``. The node logs to stderr (level INFO;
``meshnode.peers`` DEBUG: the endpoints whose health the node watches).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sys
from typing import Any

import grpc
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshnode.config.node import load_node_config
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.node import Node

PEER = "beta"
#: the metric's name as users see it (meshnode.telemetry.attributes.PEER_ENDPOINT_REJECTED)
PEER_ENDPOINT_REJECTED = "meshnode.peer.endpoint_rejected"


class Driver:
    def __init__(self, node: Node, reader: InMemoryMetricReader) -> None:
        self.node = node
        self.reader = reader
        self.relay = node.stub(PEER, demo_pb2_grpc.RelayStub)
        self.echo = node.stub(PEER, demo_pb2_grpc.EchoStub)
        self.counts: collections.Counter[str] = collections.Counter()
        self.failed: list[list[str]] = []
        self.calls = 0
        self.workers: list[asyncio.Task[None]] = []
        self.running = False
        self.stalls: list[asyncio.Task[list[str]]] = []
        self.serials: list[str] = [node.identity.serial]
        node.source.subscribe(self._rotated)

    def _rotated(self, snapshot: Any) -> None:
        if snapshot.serial != self.serials[-1]:
            self.serials.append(snapshot.serial)

    async def one(self) -> None:
        try:
            reply = await self.relay.Forward(demo_pb2.ForwardRequest(text="lb"), timeout=10)
            self.counts[reply.hops[0].node] += 1
        except grpc.aio.AioRpcError as err:
            self.failed.append([err.code().name, err.details() or ""])
        self.calls += 1

    async def worker(self) -> None:
        while self.running:
            await self.one()

    def window(self) -> dict[str, Any]:
        out = {"counts": dict(self.counts), "failed": self.failed, "calls": self.calls}
        self.counts, self.failed, self.calls = collections.Counter(), [], 0
        return out

    async def stall(self) -> list[str]:
        try:
            await self.echo.Say(demo_pb2.SayRequest(text="stall"), timeout=60)
            return ["OK", ""]
        except grpc.aio.AioRpcError as err:
            return [err.code().name, err.details() or ""]

    def metric(self) -> int:
        data = self.reader.get_metrics_data()
        total = 0
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == PEER_ENDPOINT_REJECTED:
                        total += sum(int(p.value) for p in metric.data.data_points)
        return total

    async def handle(self, line: str) -> dict[str, Any] | None:
        command, _, arg = line.strip().partition(" ")
        if command == "calls":
            for _ in range(int(arg)):
                await self.one()
            return self.window()
        if command == "load":
            self.running = True
            self.window()
            self.workers = [asyncio.ensure_future(self.worker()) for _ in range(int(arg))]
            return {}
        if command == "mark":
            return self.window()
        if command == "stop":
            self.running = False
            await asyncio.gather(*self.workers)
            self.workers = []
            return self.window()
        if command == "stall":
            self.stalls += [asyncio.ensure_future(self.stall()) for _ in range(int(arg))]
            return {}
        if command == "stalled":
            return {"ended": [t.result() for t in self.stalls if t.done()], "running": sum(not t.done()
                                                                                          for t in self.stalls)}
        if command == "metric":
            return {"endpoint_rejected": self.metric()}
        if command == "serial":
            try:
                return {"serial": (await self.echo.Say(demo_pb2.SayRequest(text="serial"), timeout=10)).text}
            except grpc.aio.AioRpcError as err:
                return {"failed": [err.code().name, err.details() or ""]}
        if command == "identity":
            self._rotated(self.node.identity)
            return {"serial": self.serials[-1], "serials": len(self.serials)}
        if command == "quit":
            return None
        return {"error": f"unknown command {line!r}"}


async def main(path: str) -> None:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("meshnode.peers").setLevel(logging.DEBUG)  # which endpoints' health is watched
    loop = asyncio.get_running_loop()
    async with Node(load_node_config(path)) as node:
        driver = Driver(node, reader)
        print("READY", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            result = await driver.handle(line)
            if result is None:
                break
            print("RESULT " + json.dumps(result), flush=True)
        driver.running = False
        for task in driver.stalls:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
