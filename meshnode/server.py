"""The node's grpc.aio server: mTLS only, every handler behind authorization.

Services are collected by :func:`meshnode.pipeline.discover` (or the
:class:`~meshnode.pipeline.Registrar` stand-in for generated
``add_XServicer_to_server`` code) and registered through the one
:class:`~meshnode.pipeline.Pipeline`, which normalises every handler and
puts the gate in front of it once, at registration (no per-call
interceptor). Health (``grpc.health.v1``) and server reflection are
registered the same way, on the same port.

Stopping drains first: health turns NOT_SERVING, and while calls keep
coming the server keeps serving them, until none came for
:data:`DRAIN_QUIET` seconds (at most :data:`DRAIN_MAX`, within the grace).
Clients that watch health (meshnode's peers do: client-side health
checking in ``dns`` mode, the control plane's endpoint health in
``spiffe-id`` mode) send their next calls to other endpoints meanwhile.
Only then does gRPC stop the server: it cancels calls that had arrived but
not yet reached a handler (CANCELLED, grpc/grpc#41785) and sends GOAWAY,
so without the drain a busy server fails calls that no retry saves.

Calls still running when the grace period ends are cancelled
by gRPC, which is expected at shutdown. :meth:`MeshServer.stop` waits
until their tasks have ended (else ``asyncio.run`` cancels gRPC's
per-call tasks itself and gRPC logs two ``CancelledError`` tracebacks per
call) and returns how many there were, for one summary line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha._async import ReflectionServicer

from meshnode.boot import ServerPlan
from meshnode.errors import ServeError
from meshnode.pipeline import AuthzInterceptor, Gate, Pipeline, Spans, discover

__all__ = ["HANDLER_THREAD_PREFIX", "MeshServer"]

log = logging.getLogger("meshnode.server")

#: The names of the threads that run plain ``def`` methods start with this.
HANDLER_THREAD_PREFIX = "meshnode-handler"
#: Stopping: the drain ends once no new call came for this many seconds...
DRAIN_QUIET = 0.25
#: ...or after this many (never more than the grace period).
DRAIN_MAX = 3.0
_DRAIN_POLL = 0.02


class MeshServer:
    """Builds and owns the grpc.aio server of a node, from its :class:`~meshnode.boot.ServerPlan`.

    ``spans``: server spans, made by the admitted wrapper around each call (tracing; None: off).
    ``interceptors``: the user's; they must see only admitted calls, so when there are any, the
    gate runs as the first interceptor (:class:`~meshnode.pipeline.AuthzInterceptor`) instead of
    at registration, the span around it.
    """

    def __init__(
        self,
        plan: ServerPlan,
        *,
        gate: Gate,
        spans: Spans | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_workers: int = 16,
    ) -> None:
        self._plan = plan
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=HANDLER_THREAD_PREFIX)
        chain: list[grpc.aio.ServerInterceptor] = []
        if interceptors:
            chain += [AuthzInterceptor(gate, self._pool, spans), *interceptors]
            self._pipeline = Pipeline(None, self._pool)  # the interceptor admits
        else:
            self._pipeline = Pipeline(gate, self._pool, spans)
        self.server = grpc.aio.server(
            migration_thread_pool=self._pool,
            interceptors=chain or None,
            # without this, a second process could bind the same port silently (SO_REUSEPORT)
            options=[
                ("grpc.so_reuseport", 0),
                # accept the keepalive pings meshnode peers send (at most one a second)
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                *plan.options,
            ],
        )
        self.health = HealthServicer()
        self._registered: list[str] = []
        self.port = 0

    def _register_all(self) -> None:
        names = self._plan.service_names
        health, _ = discover(self.health)
        reflection_services, _ = discover(ReflectionServicer([*names, reflection.SERVICE_NAME]))
        services = [*self._plan.services, *health, *reflection_services]
        self._registered = [s.name for s in services]
        self._pipeline.register(self.server, services, self._plan.generic)

    def bind(self, address: str, credentials: grpc.ServerCredentials) -> int:
        if not self._registered:
            self._register_all()
        try:
            port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ServeError(
                reason=f"cannot listen on {address}: the address is in use or not available ({exc}); "
                "stop whatever uses it or change [node] listen", component="server"
            ) from None
        if port == 0:
            raise ServeError(reason=f"cannot listen on {address}; change [node] listen", component="server")
        self.port = int(port)
        return self.port

    @property
    def service_names(self) -> list[str]:
        return self._plan.service_names

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        for name in self._plan.service_names:
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None) -> int:
        """Stop serving; in-flight calls get ``grace`` seconds. Returns how many calls were cancelled."""
        await self.health.enter_graceful_shutdown()
        await self._drain(min(DRAIN_MAX, grace or 0.0))
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

    async def _drain(self, limit: float) -> None:
        """Keep serving while calls come (health says NOT_SERVING), until quiet or ``limit`` seconds."""
        if limit <= 0:
            return
        loop = asyncio.get_running_loop()
        start = quiet_since = loop.time()
        seen = self._running_calls()
        while loop.time() - start < limit and loop.time() - quiet_since < DRAIN_QUIET:
            await asyncio.sleep(_DRAIN_POLL)
            running = self._running_calls()
            if running - seen:  # calls that started since the last look
                quiet_since = loop.time()
            seen = running
        log.debug("server: drained for %.2f s", loop.time() - start)

    def _running_calls(self) -> set[asyncio.Task[object]]:
        """The tasks of this server's calls that have not ended (gRPC names them after the method)."""
        prefixes = tuple(f"{_CALL_TASK}[/{service}/" for service in self._registered)
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
