"""Run sync handlers as async ones, for interceptors that only await.

grpc.aio runs plain ``def`` handlers on its thread pool and hands them a
context whose ``abort()`` raises. OpenTelemetry's aio server interceptor,
though, ``await``s every behavior, so a sync handler under it fails. When
such interceptors are installed, the node turns each sync behavior into an
async one that runs the original on the node's thread pool, in a copy of
the call's context (the current span and the caller's identity carry over),
with a sync view of the servicer context. Async handlers are left alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import grpc

__all__ = ["asyncify_handler"]

Behavior = Callable[..., Any]
_END = object()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class SyncContext:
    """A sync face on a grpc.aio ServicerContext, used from a worker thread."""

    def __init__(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Aborted(code, details, trailing_metadata)

    def abort_with_status(self, status: Any) -> None:
        raise _Aborted(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, metadata: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._context.send_initial_metadata(metadata), self._loop).result()

    def is_active(self) -> bool:
        return not self._context.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._context.add_done_callback(lambda _ctx: callback())
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _SyncRequests(Iterator[Any]):
    """A blocking iterator over the call's async request stream."""

    def __init__(self, requests: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._requests = requests.__aiter__()
        self._loop = loop

    def __next__(self) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(self._requests.__anext__(), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, _END)


def _unary_response(inner: Behavior, pool: Executor, streaming_request: bool) -> Behavior:
    async def run(request: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        arg = _SyncRequests(request, loop) if streaming_request else request
        call_context = contextvars.copy_context()
        try:
            return await loop.run_in_executor(pool, call_context.run, inner, arg, SyncContext(context, loop))
        except _Aborted as exc:
            await context.abort(exc.code, exc.details, exc.trailing)

    return run


def _stream_response(inner: Behavior, pool: Executor, streaming_request: bool) -> Behavior:
    async def run(request: Any, context: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        arg = _SyncRequests(request, loop) if streaming_request else request
        call_context = contextvars.copy_context()
        try:
            responses = await loop.run_in_executor(
                pool, call_context.run, lambda: iter(inner(arg, SyncContext(context, loop)))
            )
            while (item := await loop.run_in_executor(pool, call_context.run, _next, responses)) is not _END:
                yield item
        except _Aborted as exc:
            await context.abort(exc.code, exc.details, exc.trailing)

    return run


def _is_async(behavior: Behavior) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def asyncify_handler(handler: grpc.RpcMethodHandler, pool: Executor) -> grpc.RpcMethodHandler:
    """``handler`` with every sync behavior turned into an async one on ``pool``."""
    req, resp = handler.request_streaming, handler.response_streaming
    behavior = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[(req, resp)]
    if behavior is None or _is_async(behavior):
        return handler
    wrapped = (_stream_response if resp else _unary_response)(behavior, pool, req)
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(req, resp)]
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
