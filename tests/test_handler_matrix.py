"""Every handler shape through a real Node, with tracing off and on.

grpc.aio accepts five behaviour kinds (sync function, sync generator,
coroutine, async generator, reader/writer coroutine) over four arities;
OpenTelemetry's aio interceptor accepts only coroutines for unary responses
and async generators for streaming ones. The pipeline normalises them all,
so each must answer the same with and without tracing, see the caller's
identity, and be refused before it runs for a caller the policy denies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshnode.authz import peer_id
from meshnode.credentials import channel_credentials
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.nodes import node_config

SERVER = "spiffe://example.org/node/server"
CALLER = "spiffe://example.org/node/caller"
STRANGER = "spiffe://example.org/node/stranger"
SERVICE = "t.Matrix"
entered: list[str] = []


def me(name: str) -> bytes:
    entered.append(name)
    return str(peer_id()).encode()


# unary request, unary response
def uu_sync(request: bytes, context: Any) -> bytes:
    return me("uu_sync")


async def uu_coroutine(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(0)
    return me("uu_coroutine")


# unary request, streaming response
def us_sync_generator(request: bytes, context: Any) -> Iterator[bytes]:
    yield me("us_sync_generator")
    yield b"2"


def us_sync_function(request: bytes, context: Any) -> Iterator[bytes]:
    return iter([me("us_sync_function"), b"2"])


async def us_async_generator(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield me("us_async_generator")
    await asyncio.sleep(0)
    yield b"2"


async def us_writer(request: bytes, context: Any) -> None:
    await context.write(me("us_writer"))
    await context.write(b"2")


# streaming request, unary response
def su_sync(requests: Iterator[bytes], context: Any) -> bytes:
    n = sum(1 for _ in requests)
    return me("su_sync") + b"|%d" % n


async def su_coroutine(requests: AsyncIterator[bytes], context: Any) -> bytes:
    n = 0
    async for _ in requests:
        n += 1
    return me("su_coroutine") + b"|%d" % n


async def su_reader(request: Any, context: Any) -> bytes:
    n = 0
    while (await context.read()) is not grpc.aio.EOF:
        n += 1
    return me("su_reader") + b"|%d" % n


# streaming request, streaming response
def ss_sync_generator(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    first = me("ss_sync_generator")
    for _ in requests:
        yield first


async def ss_async_generator(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    first = me("ss_async_generator")
    async for _ in requests:
        yield first


async def ss_reader_writer(request: Any, context: Any) -> None:
    first = me("ss_reader_writer")
    while (await context.read()) is not grpc.aio.EOF:
        await context.write(first)


def ss_sync_function(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    first = me("ss_sync_function")
    return iter([first for _ in requests])


HANDLERS: dict[str, grpc.RpcMethodHandler] = {
    name: factory(fn)
    for factory, fns in (
        (grpc.unary_unary_rpc_method_handler, [uu_sync, uu_coroutine]),
        (grpc.unary_stream_rpc_method_handler, [us_sync_generator, us_sync_function, us_async_generator, us_writer]),
        (grpc.stream_unary_rpc_method_handler, [su_sync, su_coroutine, su_reader]),
        (grpc.stream_stream_rpc_method_handler,
         [ss_sync_generator, ss_async_generator, ss_reader_writer, ss_sync_function]),
    )
    for fn in fns
    for name in [fn.__name__]
}


def expected(name: str) -> list[bytes]:
    me_ = CALLER.encode()
    return {
        "uu": [me_], "us": [me_, b"2"], "su": [me_ + b"|3"], "ss": [me_, me_, me_],
    }[name[:2]]


def call(channel: grpc.Channel, name: str) -> tuple[grpc.StatusCode, list[bytes]]:
    path = f"/{SERVICE}/{name}"
    three = iter([b"a", b"b", b"c"])
    invoke: Callable[[], Any] = {
        "uu": lambda: [channel.unary_unary(path)(b"x", timeout=10)],
        "us": lambda: list(channel.unary_stream(path)(b"x", timeout=10)),
        "su": lambda: [channel.stream_unary(path)(three, timeout=10)],
        "ss": lambda: list(channel.stream_stream(path)(three, timeout=10)),
    }[name[:2]]
    try:
        return grpc.StatusCode.OK, invoke()
    except grpc.RpcError as exc:
        return exc.code(), []


@pytest.mark.parametrize("tracing", [False, True], ids=["untraced", "traced"])
async def test_every_arity_and_kind_answers_and_is_gated(tracing: bool) -> None:
    ca = DevCA("example.org")
    exporter = InMemorySpanExporter()
    provider = None
    if tracing:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    node = Node(
        node_config("server", allow=[CALLER]), source=ManualSource(ca, SERVER), tracer_provider=provider,
        handlers=[grpc.method_handlers_generic_handler(SERVICE, HANDLERS)],
    )
    entered.clear()
    async with node:
        target = f"127.0.0.1:{node.port}"
        options = [("grpc.ssl_target_name_override", dns_name_for(SERVER))]

        def run_all(spiffe_id: str) -> dict[str, tuple[grpc.StatusCode, list[bytes]]]:
            creds = channel_credentials(issue_snapshot(ca, spiffe_id), "example.org")
            with grpc.secure_channel(target, creds, options=options) as channel:
                return {name: call(channel, name) for name in HANDLERS}

        allowed = await asyncio.to_thread(run_all, CALLER)
        assert allowed == {name: (grpc.StatusCode.OK, expected(name)) for name in HANDLERS}
        assert sorted(entered) == sorted(HANDLERS)
        entered.clear()
        denied = await asyncio.to_thread(run_all, STRANGER)
        assert {name: code for name, (code, _) in denied.items()} == {
            name: grpc.StatusCode.PERMISSION_DENIED for name in HANDLERS
        }
        assert entered == []  # refused before any behaviour ran
    if tracing:
        server_spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
        by_name: dict[str, list[Any]] = {}
        for span in server_spans:
            by_name.setdefault(span.name, []).append(span)
        for name in HANDLERS:
            spans = by_name[f"/{SERVICE}/{name}"]
            assert sorted(s.attributes["meshnode.authz.decision"] for s in spans) == ["allow", "deny"], name
            assert {s.attributes["meshnode.peer.spiffe_id"] for s in spans} == {CALLER, STRANGER}
