"""The node's grpc.aio server: mTLS only, every handler behind authorization.

Services are registered through :class:`Registrar`, which stands in for the
server when a generated ``add_XServicer_to_server`` runs, so meshnode sees
each method handler and wraps it with the authorizer once, at registration
(no per-call interceptor). Health (``grpc.health.v1``) and server
reflection are registered the same way, on the same port.

Stopping: calls still running when the grace period ends are cancelled
by gRPC, which is expected at shutdown. :meth:`MeshServer.stop` waits
until their tasks have ended (else ``asyncio.run`` cancels gRPC's
per-call tasks itself and gRPC logs two ``CancelledError`` tracebacks per
call) and returns how many there were, for one summary line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from meshnode.asyncify import asyncify_handler
from meshnode.errors import ServeError

__all__ = ["HANDLER_THREAD_PREFIX", "HandlerWrapper", "MeshServer", "Registrar"]

log = logging.getLogger("meshnode.server")

#: The names of the threads that run plain ``def`` methods start with this.
HANDLER_THREAD_PREFIX = "meshnode-handler"

#: (full method name "/pkg.Svc/M", handler) -> handler that authorizes first
HandlerWrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]


class _WrappingGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    """For servicers registered only through a generic handler (old generated code)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: HandlerWrapper) -> None:
        self._inner = inner
        self._wrap = wrap
        self._cache: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if len(self._cache) < 4096:
            self._cache[method] = (handler, wrapped)
        return wrapped


class Registrar:
    """Collects method handlers from generated ``add_*_to_server`` functions."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        if service in self.services:
            raise ServeError(f"server: service {service} is registered twice")
        self.services[service] = dict(handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)


class MeshServer:
    """Builds and owns the grpc.aio server of a node."""

    def __init__(
        self,
        *,
        wrap: HandlerWrapper,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_workers: int = 16,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=HANDLER_THREAD_PREFIX)
        if interceptors:  # interceptors like OpenTelemetry's only await: run sync handlers as async ones
            self._wrap: HandlerWrapper = lambda method, h: asyncify_handler(wrap(method, h), self._pool)
        else:
            self._wrap = wrap
        self.server = grpc.aio.server(
            migration_thread_pool=self._pool,
            interceptors=list(interceptors) or None,
            # without this, a second process could bind the same port silently (SO_REUSEPORT)
            options=[
                ("grpc.so_reuseport", 0),
                # accept the keepalive pings meshnode peers send (at most one a second)
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                *options,
            ],
        )
        self.registrar = Registrar()
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.registrar)
        self._registered = False
        self.port = 0

    def add(self, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
        """Register ``servicer`` with its generated ``add_XServicer_to_server``."""
        add_to_server(servicer, self.registrar)

    def _register_all(self) -> None:
        names = sorted(self.registrar.services)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            ReflectionServicer([*names, reflection.SERVICE_NAME]), self.registrar
        )
        registered_generic = []
        for service, handlers in self.registrar.services.items():
            wrapped = {name: self._wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
            registered_generic.append(grpc.method_handlers_generic_handler(service, wrapped))
            self.server.add_registered_method_handlers(service, wrapped)
        self.server.add_generic_rpc_handlers(
            tuple(registered_generic)
            + tuple(_WrappingGenericHandler(g, self._wrap) for g in self.registrar.generic
                    if not _is_generated_duplicate(g, self.registrar.services))
        )
        self._registered = True

    def bind(self, address: str, credentials: grpc.ServerCredentials) -> int:
        if not self._registered:
            self._register_all()
        try:
            port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ServeError(
                f"server: cannot listen on {address}: the address is in use or not available ({exc}); "
                "stop whatever uses it or change [node] listen"
            ) from None
        if port == 0:
            raise ServeError(f"server: cannot listen on {address}; change [node] listen")
        self.port = int(port)
        return self.port

    @property
    def service_names(self) -> list[str]:
        return sorted(self.registrar.services)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        for name in self.registrar.services:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> int:
        """Stop serving; in-flight calls get ``grace`` seconds. Returns how many calls were cancelled."""
        await self.health.enter_graceful_shutdown()
        calls = self._running_calls()
        stopping = asyncio.ensure_future(self.server.stop(grace))
        cancelled = len(calls)
        if calls and grace is not None and grace > 0:
            _, still_running = await asyncio.wait(calls, timeout=grace)
            cancelled = len(still_running)
        await stopping
        await _settle(calls)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return cancelled

    def _running_calls(self) -> set[asyncio.Task[object]]:
        """The tasks of this server's calls that have not ended (gRPC names them after the method)."""
        prefixes = tuple(f"{_CALL_TASK}[/{service}/" for service in self.registrar.services)
        return {
            task for task in asyncio.all_tasks()
            if not task.done() and task.get_name().startswith(prefixes)
        }


#: grpc.aio runs each call in a task named "HandleExceptions[/pkg.Service/Method]", awaited by an outer task
#: that logs two tracebacks if it is cancelled itself (which asyncio.run does to tasks left at its end)
_CALL_TASK = "HandleExceptions"
_SETTLE_SECONDS = 2.0


async def _settle(calls: set[asyncio.Task[object]]) -> None:
    """Wait (bounded) until this server's calls have ended, then let gRPC's outer tasks finish.

    An outer task resumes on the loop iteration after its call's task ended
    and finishes without awaiting again; a few iterations are enough.
    """
    pending = {task for task in calls if not task.done()}
    if pending:
        await asyncio.wait(pending, timeout=_SETTLE_SECONDS)
    for _ in range(3):
        await asyncio.sleep(0)


class _Probe(grpc.HandlerCallDetails):  # type: ignore[misc]  # grpc ships no type hints
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _is_generated_duplicate(handler: grpc.GenericRpcHandler, services: Mapping[str, Any]) -> bool:
    """Generated code registers each service twice (generic + registered); keep one.

    A generic handler that answers for a method of an already captured
    service is that service's duplicate.
    """
    for service, methods in services.items():
        for name in methods:
            if handler.service(_Probe(f"/{service}/{name}")) is not None:
                return True
    return False
