"""Authorizing method handlers for all four RPC arities, sync and async.

:func:`wrap_method_handler` returns a handler whose behavior asks the
decision core first and runs the original only when the call is allowed.
It keeps the *kind* of each behavior, because grpc.aio dispatches on it
(``inspect.iscoroutinefunction`` / ``isasyncgenfunction``; anything else
is sync): async handlers stay coroutines or async generators and run on the
event loop; sync handlers stay plain functions or generators, so grpc.aio
still runs them on its thread pool, and the decision runs there too.

A denied call ends with ``context.abort()`` before the original behavior is
entered: request-streaming methods never read a message, response-streaming
ones never write one. In a sync handler grpc.aio passes a sync context whose
``abort()`` raises at once; should a context ever return a coroutine or
return at all, the wrapper sets the status and raises, so the call fails
closed.

The same wrappers serve three entry points that share one decision core:
:meth:`~meshnode.authz.Authorizer.wrap_handler` (at registration, no
per-call interceptor coroutine), :class:`AuthzInterceptor` (any grpc.aio
server) and :class:`AuthorizingRegistrar` (pass it instead of the server
to generated ``add_*Servicer_to_server`` functions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from meshnode.authz.context import CURRENT_PEER

if TYPE_CHECKING:
    from meshnode.authz.authorizer import Verdict

__all__ = ["AuthorizingRegistrar", "AuthzInterceptor", "wrap_method_handler"]

Check = Callable[[Any, str], "Verdict"]
Wrap = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
Behavior = Callable[..., Any]


def _is_async(behavior: Behavior) -> bool:
    # grpc.aio's own test for unary-response and request-iterator dispatch
    return inspect.isawaitable(behavior) or inspect.iscoroutinefunction(behavior) or (
        inspect.isasyncgenfunction(behavior)
    )


async def _abort_async(context: Any, verdict: Verdict) -> None:
    await context.abort(verdict.code, verdict.details)
    raise RuntimeError("authz: context.abort() returned instead of ending the call")


def _abort_sync(context: Any, verdict: Verdict) -> None:
    result = context.abort(verdict.code, verdict.details)
    if inspect.iscoroutine(result):  # an async context reached a sync behavior
        result.close()
    context.set_code(verdict.code)
    context.set_details(verdict.details)
    raise RuntimeError(f"authz: call refused ({verdict.decision}); context.abort() did not end it")


def _unary_response(check: Check, method: str, inner: Behavior) -> Behavior:
    if _is_async(inner):

        async def authorized_async(request: Any, context: Any) -> Any:
            verdict = check(context, method)
            if verdict.code is not None:
                await _abort_async(context, verdict)
            CURRENT_PEER.set(verdict.peer)  # the RPC's own task context
            return await inner(request, context)

        return authorized_async

    def authorized(request: Any, context: Any) -> Any:
        verdict = check(context, method)
        if verdict.code is not None:
            _abort_sync(context, verdict)
        token = CURRENT_PEER.set(verdict.peer)  # a pool thread: reset before it serves another call
        try:
            return inner(request, context)
        finally:
            CURRENT_PEER.reset(token)

    return authorized


def _stream_response(check: Check, method: str, inner: Behavior) -> Behavior:
    if inspect.iscoroutinefunction(inner):  # reader/writer API

        async def authorized_writer(request: Any, context: Any) -> Any:
            verdict = check(context, method)
            if verdict.code is not None:
                await _abort_async(context, verdict)
            CURRENT_PEER.set(verdict.peer)
            return await inner(request, context)

        return authorized_writer

    if inspect.isasyncgenfunction(inner):

        async def authorized_agen(request: Any, context: Any) -> Any:
            verdict = check(context, method)
            if verdict.code is not None:
                await _abort_async(context, verdict)
            CURRENT_PEER.set(verdict.peer)
            responses = inner(request, context)
            try:
                async for item in responses:
                    yield item
            finally:
                await responses.aclose()

        return authorized_agen

    def authorized_gen(request: Any, context: Any) -> Any:
        verdict = check(context, method)
        if verdict.code is not None:
            _abort_sync(context, verdict)
        peer = verdict.peer
        token = CURRENT_PEER.set(peer)
        try:
            responses = iter(inner(request, context))
        finally:
            CURRENT_PEER.reset(token)
        try:
            while True:  # each step may run on another pool thread
                token = CURRENT_PEER.set(peer)
                try:
                    item = next(responses)
                except StopIteration:
                    return
                finally:
                    CURRENT_PEER.reset(token)
                yield item
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()

    return authorized_gen


def wrap_method_handler(check: Check, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with every call authorized by ``check(context, method)``."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    h = handler
    if h.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary_response(check, method, h.unary_unary), **kw)
    if h.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_stream_response(check, method, h.unary_stream), **kw)
    if h.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_unary_response(check, method, h.stream_unary), **kw)
    if h.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(_stream_response(check, method, h.stream_stream), **kw)
    raise TypeError(f"authz: the handler for {method} has no behavior to wrap")


class _WrapCache:
    """Wrapped handlers per method, reused while the resolver returns the same handler."""

    _LIMIT = 1024

    def __init__(self, wrap: Wrap) -> None:
        self._wrap = wrap
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        hit = self._cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = self._wrap(method, handler)
        if len(self._cache) >= self._LIMIT:  # catch-all generic handlers may see any path
            self._cache.clear()
        self._cache[method] = (handler, wrapped)
        return wrapped


class AuthzInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authorizes every call of a grpc.aio server; put it after OTel's server interceptor."""

    def __init__(self, wrap: Wrap) -> None:
        self._handlers = _WrapCache(wrap)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, as without the interceptor
        return self._handlers.get(handler_call_details.method, handler)


class _AuthorizingGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, wrap: Wrap, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._handlers = _WrapCache(wrap)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler_call_details.method, handler)


class AuthorizingRegistrar:
    """Registers handlers on ``server`` with authorization wrapped in.

    ``add_EchoServicer_to_server(servicer, authorizer.registrar(server))``
    """

    def __init__(self, wrap: Wrap, server: Any) -> None:
        self._wrap = wrap
        self._server = server

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self._wrap(f"/{service_name}/{name}", h) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, wrapped)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_AuthorizingGenericHandler(self._wrap, h) for h in generic_rpc_handlers)
        )
