"""The one server handler pipeline: discover, normalise, admit, register.

Every method a node serves passes through here once, at registration:

1. **discover** (:func:`discover`): which gRPC services and methods a
   servicer implements, found by running its generated
   ``add_XServicer_to_server`` against a collecting stand-in for the server.
   The method names feed both registration and the authorization policy.
2. **normalise** (:func:`normalise`): grpc.aio accepts many behaviour kinds
   (sync function, sync generator, coroutine, async generator, a
   reader/writer coroutine on a streaming response), but interceptors (the
   user's, OpenTelemetry's) only ``await`` unary responses and ``async for``
   streaming ones. Every behaviour becomes one of those two shapes: a coroutine
   function for unary responses, an async generator function for streaming
   ones. Sync code runs on the node's thread pool in a copy of the call's
   context (the span and the caller's identity carry over), with a sync view
   of the servicer context; a reader/writer coroutine runs inside an async
   generator that yields nothing (its ``context.write()`` goes to the call).
3. **admit** (:func:`admit`): a :class:`Gate` decides the call before the
   behaviour is entered. A refused call ends with its status code set on
   the context, without an exception (so tracing records no stack trace):
   request-streaming methods never read a message, response-streaming ones
   never write one. An admitted call binds its per-call state
   (``Admission.enter``: the caller's identity for ``peer_id()``). This
   wrapper is meshnode's per-call hook: with RPC metrics on, it also adds
   each call's duration and status code to the admission's ``series``
   (:mod:`meshnode.telemetry.rpcmetrics`), and with tracing on it makes the
   call's server span (:mod:`meshnode.telemetry.serverspans`); there is no
   second interceptor. An admitted server stream with neither is handed to
   grpc as the handler's own generator: nothing runs per message.
4. **register** (:class:`Pipeline.register`): registered method handlers
   (and the same handlers as a generic handler, for grpc releases whose
   interceptor path looks only at generic handlers).

Where the gate sits: at registration (no per-call interceptor coroutine),
unless user interceptors must see only admitted calls; then
:class:`AuthzInterceptor`, first in the chain, spans and gates before them. Both use
:meth:`Pipeline.prepare`. Everything here runs on the event loop thread,
except sync behaviours, which run on the pool.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

import grpc
import grpc.aio

from meshnode.errors import ConfigError, ServeError
from meshnode.telemetry.rpcmetrics import CallSeries

__all__ = [
    "Admission",
    "AuthzInterceptor",
    "Gate",
    "Pipeline",
    "Registrar",
    "ServiceMethods",
    "Spans",
    "admit",
    "discover",
    "normalise",
]

Behavior = Callable[..., Any]

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_END = object()


class Admission(Protocol):
    """A gate's answer for one call: ``code`` None admits it."""

    @property
    def code(self) -> grpc.StatusCode | None: ...

    @property
    def details(self) -> str: ...

    @property
    def series(self) -> CallSeries | None:
        """Where the call's duration and status go (None: RPC metrics are off)."""

    def enter(self) -> None:
        """Bind per-call state in the running call's context (before the behaviour runs)."""


Gate = Callable[[Any, str], Admission]  # (servicer context, "/pkg.Svc/Method") -> Admission


class Spans(Protocol):
    """Server spans (:class:`meshnode.telemetry.serverspans.ServerSpans`): one per call, current while it runs."""

    def start(self, method: str, context: Any) -> tuple[Any, object]:
        """Start the call's span and make it current: (span, token to end it with)."""

    def end(self, span: Any, token: object, code: int, error: BaseException | None, details: str | None) -> None:
        """End the span of a call that ended with status ``code`` (a number) and made it no longer current."""


# -- 1. discover ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceMethods:
    """One gRPC service a servicer implements: its name and method handlers as generated."""

    name: str  # "pkg.Service"
    methods: Mapping[str, grpc.RpcMethodHandler]  # "Method" -> handler
    servicer: object


class Registrar:
    """Stands in for a grpc server while generated ``add_*_to_server`` code runs, and collects."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        if service in self.services:
            raise ServeError(reason=f"service {service} is registered twice", component="server")
        self.services[service] = dict(handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)


def _adders(servicer: object) -> list[Callable[[Any, Any], None]]:
    found = []
    for klass in type(servicer).__mro__:
        module = sys.modules.get(klass.__module__)
        adder = getattr(module, f"add_{klass.__name__}_to_server", None) if module else None
        if callable(adder):
            found.append(adder)
    return found


def discover(servicer: object) -> tuple[list[ServiceMethods], list[grpc.GenericRpcHandler]]:
    """The services ``servicer`` implements (through its generated bases), and any generic
    handlers it registers whose methods cannot be listed (old generated code)."""
    adders = _adders(servicer)
    if not adders:
        raise ConfigError(
            f"service: {type(servicer).__name__} does not subclass a generated servicer "
            "(e.g. demo_pb2_grpc.EchoServicer); meshnode cannot tell which gRPC service it implements"
        )
    collected = Registrar()
    for add in adders:
        add(servicer, collected)
    services = [ServiceMethods(name, methods, servicer) for name, methods in collected.services.items()]
    generic = [g for g in collected.generic if not _duplicates(g, collected.services)]
    return services, generic


class _Probe(grpc.HandlerCallDetails):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _duplicates(handler: grpc.GenericRpcHandler, services: Mapping[str, Mapping[str, Any]]) -> bool:
    """Generated code registers each service twice (generic + registered): keep the registered one."""
    return any(
        handler.service(_Probe(f"/{service}/{name}")) is not None
        for service, methods in services.items()
        for name in methods
    )


# -- 2. normalise --------------------------------------------------------------------------------------


def _kind(behavior: Behavior) -> str:
    for candidate in (behavior, getattr(behavior, "__call__", None)):  # noqa: B004  # objects with async __call__
        if inspect.iscoroutinefunction(candidate):
            return "coroutine"
        if inspect.isasyncgenfunction(candidate):
            return "asyncgen"
    return "sync"


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing = code, details, trailing


class SyncContext:
    """A sync face on a grpc.aio ServicerContext, for behaviours running on a pool thread."""

    def __init__(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Aborted(code, details, trailing_metadata)

    def abort_with_status(self, status: Any) -> None:
        raise _Aborted(status.code, status.details, status.trailing_metadata)

    def send_initial_metadata(self, metadata: Any) -> None:
        self._run(self._context.send_initial_metadata(metadata))

    def read(self) -> Any:
        return self._run(self._context.read())

    def write(self, message: Any) -> None:
        self._run(self._context.write(message))

    def is_active(self) -> bool:
        return not self._context.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._context.add_done_callback(lambda _ctx: callback())
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _SyncRequests(Iterator[Any]):
    """A blocking iterator, for a pool thread, over the call's async request stream."""

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


def _sync_unary(inner: Behavior, pool: Executor | None, streaming_request: bool) -> Behavior:
    async def on_pool(request: Any, context: Any) -> Any:
        loop = asyncio.get_running_loop()
        arg = _SyncRequests(request, loop) if streaming_request else request
        call = contextvars.copy_context()
        try:
            result = await loop.run_in_executor(pool, call.run, inner, arg, SyncContext(context, loop))
            return (await result) if inspect.isawaitable(result) else result
        except _Aborted as exc:
            await context.abort(exc.code, exc.details, exc.trailing)

    return on_pool


def _sync_stream(inner: Behavior, pool: Executor | None, streaming_request: bool) -> Behavior:
    async def on_pool(request: Any, context: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        arg = _SyncRequests(request, loop) if streaming_request else request
        call = contextvars.copy_context()
        try:
            responses = await loop.run_in_executor(pool, call.run, inner, arg, SyncContext(context, loop))
            if hasattr(responses, "__aiter__"):
                async for item in responses:
                    yield item
                return
            iterator = await loop.run_in_executor(pool, call.run, iter, responses)
            while (item := await loop.run_in_executor(pool, call.run, _next, iterator)) is not _END:
                yield item
        except _Aborted as exc:
            await context.abort(exc.code, exc.details, exc.trailing)

    return on_pool


def _writer_stream(inner: Behavior) -> Behavior:
    async def writes(request: Any, context: Any) -> AsyncIterator[Any]:
        await inner(request, context)  # sends with context.write(); yields nothing itself
        return
        yield  # an async generator function

    return writes


def _behavior(handler: grpc.RpcMethodHandler) -> Behavior:
    key = (handler.request_streaming, handler.response_streaming)
    behavior: Behavior | None = {
        (False, False): handler.unary_unary,
        (False, True): handler.unary_stream,
        (True, False): handler.stream_unary,
        (True, True): handler.stream_stream,
    }[key]
    if behavior is None:
        raise ServeError(reason=f"a method handler has no behaviour for its arity {key}", component="server")
    return behavior


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Behavior) -> grpc.RpcMethodHandler:
    factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def normalise(handler: grpc.RpcMethodHandler, pool: Executor | None = None) -> grpc.RpcMethodHandler:
    """``handler`` with a coroutine (unary response) or async generator (streaming response) behaviour.

    Sync behaviours run on ``pool`` (None: the event loop's default executor).
    A handler already in that shape is returned as it is.
    """
    behavior = _behavior(handler)
    kind = _kind(behavior)
    req, resp = handler.request_streaming, handler.response_streaming
    if resp:
        if kind == "asyncgen":
            return handler
        new = _writer_stream(behavior) if kind == "coroutine" else _sync_stream(behavior, pool, req)
    else:
        if kind == "coroutine":
            return handler
        new = _sync_unary(behavior, pool, req)
    return _rebuild(handler, new)


# -- 3. admit ------------------------------------------------------------------------------------------


def _refuse(context: Any, admission: Admission) -> None:
    """End a refused call with its status, without raising: the call is over when the wrapper returns.

    ``context.abort()`` would raise through every interceptor above, and a
    server span records an escaping exception as an ``exception`` event with
    a Python stack trace: a denial is not a crash.
    (grpc.aio sends no response message when the code is not OK.)
    """
    code = admission.code
    assert code is not None
    context.set_code(code)
    context.set_details(admission.details)


def _ended(context: Any, error: BaseException | None) -> int:
    """The status code number a call ended with: what the handler set or aborted with, else from ``error``."""
    code = context.code()
    if code is not None:
        return int(code.value[0])
    if error is None:
        return 0  # OK
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return 1  # CANCELLED: the caller went away, or the server is stopping
    return 2  # UNKNOWN: what gRPC sends for an exception from a handler


class _NoMessages:
    """The responses of a refused stream: none (an async iterator that ends at once)."""

    def __aiter__(self) -> _NoMessages:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


_NO_MESSAGES = _NoMessages()


class _NoSpans:
    """:class:`Spans` that make none."""

    def start(self, method: str, context: Any) -> tuple[Any, object]:
        return None, None

    def end(self, span: Any, token: object, code: int, error: BaseException | None, details: str | None) -> None:
        return None


_NO_SPANS = _NoSpans()


async def _async_generator_template(request: Any, context: Any) -> AsyncIterator[Any]:  # pragma: no cover
    yield None  # only its code object is used: it marks what grpc.aio must treat as an async generator


class _AsyncGenFunction:
    """A plain function that returns an async iterator, made to look like an async generator function.

    grpc.aio decides how to drive a streaming behaviour with
    ``inspect.isasyncgenfunction`` (its server's ``_finish_handler_with_stream_responses``),
    and ``inspect`` accepts any "function-like" object (a ``__code__``, a
    ``__name__``, ...; the duck typing it has for Cython functions) whose code
    has the async-generator flag. So the gate runs when grpc calls this
    object, and grpc then iterates the handler's own generator: an admitted
    stream costs nothing per message (a wrapping ``async for ... yield``
    costs a generator step per message). :func:`_stream_shape` checks, at
    registration, that ``inspect`` still sees it that way.
    """

    __code__ = _async_generator_template.__code__
    __defaults__ = None
    __kwdefaults__ = None
    __annotations__: dict[str, Any] = {}  # what inspect reads; never changed

    def __init__(self, call: Callable[[Any, Any], AsyncIterator[Any]], method: str) -> None:
        self._call = call
        self.__name__ = self.__qualname__ = f"admitted {method}"

    def __call__(self, request: Any, context: Any) -> AsyncIterator[Any]:
        return self._call(request, context)


def _stream_shape_ok() -> bool:
    """Whether this Python's ``inspect`` (what grpc.aio asks) takes an :class:`_AsyncGenFunction` for an
    async generator function and not for a coroutine function."""
    probe = _AsyncGenFunction(lambda request, context: _NO_MESSAGES, "/probe.Probe/Probe")
    return inspect.isasyncgenfunction(probe) and not inspect.iscoroutinefunction(probe)


_STREAM_SHAPE_OK = _stream_shape_ok()


def admit(
    gate: Gate, method: str, handler: grpc.RpcMethodHandler, spans: Spans | None = None
) -> grpc.RpcMethodHandler:
    """A normalised ``handler`` whose every call is decided by ``gate`` before it runs.

    When the admission carries a ``series`` (RPC metrics are on), the call's
    duration and status code are added to it: refused calls too. With
    ``spans`` (tracing is on), each call runs in its server span, started
    before the gate decides (the decision is recorded on it).
    """
    if spans is not None or (handler.response_streaming and not _STREAM_SHAPE_OK):
        spans = spans or _NO_SPANS  # without the shape: the wrapping generator, no span
        return _rebuild(handler, _traced(gate, method, _behavior(handler), handler.response_streaming, spans))
    inner = _behavior(handler)
    if handler.response_streaming:

        async def measured_stream(
            request: Any, context: Any, admission: Admission, started: float
        ) -> AsyncIterator[Any]:
            """An admitted stream whose end is recorded in its series (RPC metrics)."""
            series = admission.series
            assert series is not None
            responses = inner(request, context)
            try:
                async for item in responses:
                    yield item
            except BaseException as exc:
                series.record(_ended(context, exc), perf_counter() - started)
                raise
            finally:
                await responses.aclose()
            series.record(_ended(context, None), perf_counter() - started)

        def admitted_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started = perf_counter()
            admission = gate(context, method)
            series = admission.series
            if admission.code is not None:
                _refuse(context, admission)
                if series is not None:
                    series.record(admission.code.value[0], perf_counter() - started)
                return _NO_MESSAGES
            admission.enter()
            if series is not None:
                return measured_stream(request, context, admission, started)
            responses: AsyncIterator[Any] = inner(request, context)
            return responses  # gRPC iterates the handler's own generator: nothing per message

        return _rebuild(handler, _AsyncGenFunction(admitted_stream, method))

    async def admitted(request: Any, context: Any) -> Any:
        started = perf_counter()
        admission = gate(context, method)
        series = admission.series
        if admission.code is not None:
            _refuse(context, admission)
            if series is not None:
                series.record(admission.code.value[0], perf_counter() - started)
            return None
        admission.enter()
        if series is None:
            return await inner(request, context)
        try:
            response = await inner(request, context)
        except BaseException as exc:
            series.record(_ended(context, exc), perf_counter() - started)
            raise
        series.record(_ended(context, None), perf_counter() - started)
        return response

    return _rebuild(handler, admitted)


def _traced(gate: Gate, method: str, inner: Behavior, streaming: bool, spans: Spans) -> Behavior:
    """:func:`admit`'s wrappers with the call's server span around them (see :mod:`meshnode.telemetry.serverspans`)."""

    def finish(context: Any, span: Any, token: object, error: BaseException | None, started: float,
               series: CallSeries | None) -> None:
        code = _ended(context, error)
        spans.end(span, token, code, error, context.details())
        if series is not None:
            series.record(code, perf_counter() - started)

    if streaming:

        async def traced_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            started = perf_counter()
            span, token = spans.start(method, context)
            series: CallSeries | None = None
            error: BaseException | None = None
            try:
                admission = gate(context, method)
                series = admission.series
                if admission.code is not None:
                    _refuse(context, admission)
                    return
                admission.enter()
                responses = inner(request, context)
                try:
                    async for item in responses:
                        yield item
                finally:
                    await responses.aclose()
            except BaseException as exc:
                error = exc
                raise
            finally:
                finish(context, span, token, error, started, series)

        return traced_stream

    async def traced(request: Any, context: Any) -> Any:
        started = perf_counter()
        span, token = spans.start(method, context)
        series: CallSeries | None = None
        error: BaseException | None = None
        try:
            admission = gate(context, method)
            series = admission.series
            if admission.code is not None:
                _refuse(context, admission)
                return None
            admission.enter()
            return await inner(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            finish(context, span, token, error, started, series)

    return traced


# -- 4. register ---------------------------------------------------------------------------------------


Prepare = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class _PreparedCache:
    """Prepared handlers per method, reused while the lookup returns the same handler."""

    _LIMIT = 1024

    def __init__(self, prepare: Prepare) -> None:
        self._prepare = prepare
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        hit = self._cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        prepared = self._prepare(method, handler)
        if len(self._cache) >= self._LIMIT:  # catch-all generic handlers may see any path
            self._cache.clear()
        self._cache[method] = (handler, prepared)
        return prepared


class _PreparedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    """A generic handler whose every handler goes through the pipeline."""

    def __init__(self, inner: grpc.GenericRpcHandler, prepare: Prepare) -> None:
        self._inner = inner
        self._handlers = _PreparedCache(prepare)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._handlers.get(handler_call_details.method, handler)


class AuthzInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Normalises and gates every call of a grpc.aio server (in its server span, with ``spans``); put it first,
    or after OpenTelemetry's server interceptor on a server that uses that instead."""

    def __init__(self, gate: Gate, pool: Executor | None = None, spans: Spans | None = None) -> None:
        self._handlers = _PreparedCache(Pipeline(gate, pool, spans).prepare)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, as without the interceptor
        return self._handlers.get(handler_call_details.method, handler)


class Pipeline:
    """Normalise (on ``pool``) and, with a ``gate``, admit (in a server span with ``spans``): one
    ``prepare`` for every handler."""

    def __init__(self, gate: Gate | None, pool: Executor | None = None, spans: Spans | None = None) -> None:
        self._gate = gate
        self._pool = pool
        self._spans = spans

    def prepare(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        normalised = normalise(handler, self._pool)
        return normalised if self._gate is None else admit(self._gate, method, normalised, self._spans)

    def register(
        self, server: Any, services: Sequence[ServiceMethods], generic: Sequence[grpc.GenericRpcHandler] = ()
    ) -> None:
        """Register every service and generic handler on ``server``, prepared."""
        handlers: list[grpc.GenericRpcHandler] = []
        for service in services:
            prepared = {name: self.prepare(f"/{service.name}/{name}", h) for name, h in service.methods.items()}
            server.add_registered_method_handlers(service.name, prepared)
            handlers.append(grpc.method_handlers_generic_handler(service.name, prepared))
        handlers += [_PreparedGeneric(g, self.prepare) for g in generic]
        server.add_generic_rpc_handlers(tuple(handlers))

    def registrar(self, server: Any) -> _PreparingRegistrar:
        """Stand-in for ``server`` in generated ``add_*Servicer_to_server`` calls."""
        return _PreparingRegistrar(self, server)


class _PreparingRegistrar:
    def __init__(self, pipeline: Pipeline, server: Any) -> None:
        self._pipeline = pipeline
        self._server = server

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        prepare = self._pipeline.prepare
        prepared = {name: prepare(f"/{service_name}/{name}", h) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, prepared)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        prepare = self._pipeline.prepare
        self._server.add_generic_rpc_handlers(tuple(_PreparedGeneric(h, prepare) for h in generic_rpc_handlers))
