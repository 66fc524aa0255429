"""The compose demos' client: one Relay call along a route of nodes, then print the hops.

    python client.py --target alpha:7001 --server-id spiffe://example.org/node/alpha beta gamma

The client is a plain workload, not a node: it takes its SVID from the
Workload API (``SPIFFE_ENDPOINT_SOCKET``), dials the first node over mTLS
with roots of that node's trust domain only, verifies the node by the DNS
name mapped from its SPIFFE ID (grpcio verifies servers only by DNS SAN),
and calls ``meshnode.demo.v1.Relay/Forward``. Each hop reports the caller
ID it verified, so the output shows the chain of identities.

Traces: the OpenTelemetry environment decides (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_JSONL_PATH``); the client span is the root of the trace.

Exit status: 0 the call went through; 1 it failed (status printed); 2/3 no
usable configuration / identity (meshnode's exit codes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import grpc

from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.errors import MeshnodeError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id
from meshnode.telemetry.attributes import LOCAL_SPIFFE_ID, PEER_SPIFFE_ID
from meshnode.telemetry.instrumentation import aio_client_interceptors
from meshnode.telemetry.setup import configure_telemetry

#: Nodes start in any order and the first hop may come up before the last;
#: UNAVAILABLE is retried until this many seconds have passed.
RETRY_FOR = 60.0


async def forward(
    snapshot: IdentitySnapshot, target: str, server_id: SpiffeID, route: list[str], text: str
) -> demo_pb2.ForwardReply:
    server_name = dns_name_for(server_id)
    interceptors = aio_client_interceptors(
        attributes={PEER_SPIFFE_ID: str(server_id), LOCAL_SPIFFE_ID: str(snapshot.spiffe_id)}
    )
    options = (("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name))
    creds = channel_credentials(snapshot, server_id.trust_domain)
    async with grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors) as channel:
        stub = demo_pb2_grpc.RelayStub(channel)  # type: ignore[no-untyped-call]
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.5
        while True:
            try:
                reply: demo_pb2.ForwardReply = await stub.Forward(
                    demo_pb2.ForwardRequest(text=text, route=route), timeout=10.0
                )
                return reply
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise
                print(f"client: {err.details()}; retrying in {delay:g} s", file=sys.stderr, flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the first node")
    parser.add_argument("--server-id", required=True, help="the SPIFFE ID the first node must present")
    parser.add_argument("--text", default="hello through the mesh")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for this client's SVID")
    parser.add_argument("route", nargs="*", help="peer names to visit after the first node, in order")
    args = parser.parse_args()
    telemetry = configure_telemetry(None, default_service_name="client")
    try:
        server_id = parse_spiffe_id(args.server_id)
        with WorkloadApiSource(timeout=args.timeout) as source:
            snapshot = source.current()
            print(f"client: I am {snapshot.spiffe_id}; calling {args.target}, expecting {server_id}", flush=True)
            reply = asyncio.run(forward(snapshot, args.target, server_id, list(args.route), args.text))
    except MeshnodeError as exc:
        print(f"client: {exc}", file=sys.stderr)
        return exc.exit_code
    except grpc.aio.AioRpcError as err:
        print(f"client: Relay/Forward failed: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown()
    for i, hop in enumerate(reply.hops, 1):
        print(f"hop {i}: {hop.node:<6} {hop.spiffe_id}  (verified caller: {hop.caller})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
