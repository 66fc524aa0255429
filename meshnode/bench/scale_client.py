"""Many mTLS connections in one process: ``python -m meshnode.bench.scale_client --connections N ...``.

Opens ``--connections`` grpc.aio channels to the server, each with a local
subchannel pool and an option of its own, so each is its own TCP + TLS
connection (channels with equal arguments would share one). Each makes
its first call while connecting (at most ``--connect-batch`` handshakes at
once), then one call every ``--interval`` seconds, phases spread evenly
over the interval. The first ``--relay`` connections call
``Relay.Forward`` through the server's peer ``p<i>`` (so the server keeps
that peer channel open and busy); the others call ``Echo.Say``.

Protocol (:mod:`meshnode.bench.protocol`): one ``{"ready": ...}`` line once
every connection made its first call (``connected``, ``failed``,
``connect_s``); then ``{"cmd": "window", "duration": D}`` answers after D
seconds with the calls that *ended* in that window (``latencies_ms``,
``errors``, ``error_samples``); ``pause`` / ``resume`` stop and restart the
calls (the connections stay open); ``burst`` makes one call on each relay
connection at once and answers with ``calls``, ``errors``; end of stdin or
``quit`` stops.
The client's identity is issued from the shared CA in ``--state-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from typing import Any

import grpc

from meshnode.bench.pki import CLIENT_ID, BenchPKI, client_options
from meshnode.bench.protocol import send_line
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.fdlimit import raise_soft_limit

__all__ = ["main"]

_TIMEOUT = 10.0


class _Record:
    """Calls that ended while a window was open."""

    def __init__(self) -> None:
        self.open = False
        self.paused = False
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()

    def add(self, seconds: float, error: str | None) -> None:
        if not self.open:
            return
        if error is None:
            self.latencies.append(seconds * 1e3)
        else:
            self.errors[error] += 1


class _Connection:
    def __init__(self, index: int, target: str, credentials: grpc.ChannelCredentials, relay: bool) -> None:
        options = [*client_options(), ("grpc.use_local_subchannel_pool", 1),
                   ("meshnode.bench.connection", index)]
        self.channel = grpc.aio.secure_channel(target, credentials, options=options)
        self.index = index
        if relay:
            stub = demo_pb2_grpc.RelayStub(self.channel)
            request = demo_pb2.ForwardRequest(text="scale", route=[f"p{index}"])
            self._call: Any = lambda: stub.Forward(request, timeout=_TIMEOUT)
        else:
            echo = demo_pb2_grpc.EchoStub(self.channel)
            say = demo_pb2.SayRequest(text="scale")
            self._call = lambda: echo.Say(say, timeout=_TIMEOUT)

    async def call(self) -> tuple[float, str | None]:
        start = time.monotonic()
        try:
            await self._call()
        except grpc.aio.AioRpcError as err:
            return time.monotonic() - start, f"{err.code().name}: {err.details()}"
        return time.monotonic() - start, None

    async def run(self, record: _Record, start: float, interval: float) -> None:
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(start + tick * interval - time.monotonic(), 0.0))
            if record.paused:
                continue
            seconds, error = await self.call()
            record.add(seconds, error)


async def _connect(connections: list[_Connection], batch: int) -> tuple[int, list[str]]:
    gate = asyncio.Semaphore(batch)
    failures: list[str] = []

    async def first(c: _Connection) -> None:
        async with gate:
            _, error = await c.call()
            if error is not None:
                failures.append(error)

    await asyncio.gather(*(first(c) for c in connections))
    return len(connections) - len(failures), failures


async def _serve(args: argparse.Namespace) -> None:
    raise_soft_limit("bench client", quiet=True)
    credentials = BenchPKI(args.state_dir).client_credentials()
    target = f"127.0.0.1:{args.port}"
    connections = [_Connection(args.first + i, target, credentials, args.first + i < args.relay)
                   for i in range(args.connections)]
    began = time.monotonic()
    connected, failures = await _connect(connections, args.connect_batch)
    record = _Record()
    start = time.monotonic()
    tasks = [asyncio.create_task(c.run(record, start + args.interval * i / len(connections), args.interval))
             for i, c in enumerate(connections)]
    send_line({"ready": True, "client": CLIENT_ID, "connected": connected, "failed": len(failures),
               "failure_samples": sorted(set(failures))[:5], "connect_s": start - began})
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or '"quit"' in line:
                break
            command = json.loads(line)
            if command.get("cmd") in ("pause", "resume"):
                record.paused = command["cmd"] == "pause"
                send_line({"paused": record.paused})
                continue
            if command.get("cmd") == "burst":  # one call on each relay connection, all at once
                results = await asyncio.gather(*(c.call() for c in connections if c.index < args.relay))
                failed = [error for _, error in results if error is not None]
                send_line({"calls": len(results), "errors": len(failed), "error_samples": sorted(set(failed))[:5]})
                continue
            duration = float(command.get("duration", 1.0))
            record.latencies, record.errors, record.open = [], Counter(), True
            await asyncio.sleep(duration)
            record.open = False
            send_line({"calls": len(record.latencies) + sum(record.errors.values()),
                       "latencies_ms": record.latencies, "errors": sum(record.errors.values()),
                       "error_samples": [f"{n} x {e}" for e, n in record.errors.most_common(5)]})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.channel.close() for c in connections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.scale_client", description=__doc__)
    parser.add_argument("--state-dir", required=True, help="the shared dev CA's directory")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of this process's first connection")
    parser.add_argument("--relay", type=int, default=0, help="connections 0..relay-1 call Relay.Forward via p<i>")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one connection's calls")
    parser.add_argument("--connect-batch", type=int, default=32, help="handshakes at once while connecting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args))
    except Exception as exc:  # reported to the runner, which quotes it
        send_line({"error": f"scale client: {type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
