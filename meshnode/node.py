"""The node: composition root and lifecycle.

``Node`` wires the pieces in one direction: identity source -> snapshot ->
server credentials / peer channels -> authorization -> handlers. Rotation is
a new snapshot flowing the same way. What to build comes from the one boot
plan (:func:`meshnode.boot.boot`), which ``meshnode check`` runs too.

```python
async with Node(load_node_config("node.toml"), services=[Greeter()]) as node:
    await node.wait_closed()
```

Extension points: ``services`` (``NodeService`` subclasses or plain
generated servicers), ``handlers`` (generic RPC handlers), ``interceptors``
(grpc.aio server interceptors: they run inside the server span and wrap
only calls authorization admitted), ``options`` (grpc server options). A node without
``[node] listen`` is a client only: it opens no port and needs no policy.
With ``[telemetry] prometheus`` the node records RPC metrics and serves them
(:mod:`meshnode.telemetry.prometheus`); it never configures logging.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from meshnode.authz.authorizer import Authorizer
from meshnode.boot import Boot, boot
from meshnode.channel import PeerChannel
from meshnode.config.node import NodeConfig, PeerConfig, parse_address
from meshnode.credentials import ServerCredentials
from meshnode.errors import AlreadyStartedError, NotStartedError, PeerError
from meshnode.identity.guard import GuardedSource
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource
from meshnode.identity_state import IdentityState
from meshnode.node_jwt import NodeJwt
from meshnode.peers import PeerChannels
from meshnode.server import MeshServer
from meshnode.service import NodeService
from meshnode.spiffeid import SpiffeID
from meshnode.telemetry.attributes import LOCAL_SPIFFE_ID, NODE_NAME
from meshnode.telemetry.instruments import instruments
from meshnode.telemetry.rpcmetrics import RpcMetrics

if TYPE_CHECKING:
    from meshnode.telemetry.prometheus import MetricsEndpoint

__all__ = ["Node"]

log = logging.getLogger("meshnode.node")

T = TypeVar("T")


def _tracing_enabled(tracer_provider: TracerProvider | None) -> bool:
    if tracer_provider is not None:
        return True
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class Node:
    """A mesh node: serves its services over mTLS and calls its peers."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        services: Sequence[object] = (),
        source: IdentitySource | None = None,
        tracer_provider: TracerProvider | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        handlers: Sequence[grpc.GenericRpcHandler] = (),
    ) -> None:
        self.config = config
        self._services = list(services)
        self._given_source = source
        self._tracer_provider = tracer_provider
        self._interceptors = tuple(interceptors)
        self._options = tuple(options)
        self._handlers = tuple(handlers)
        self._boot: Boot | None = None
        self._source: IdentitySource | None = None
        self._owns_source = source is None
        self._server: MeshServer | None = None
        self._creds: ServerCredentials | None = None
        self._state: IdentityState | None = None
        self._peers: PeerChannels | None = None
        self._authorizer: Authorizer | None = None
        self._jwt: NodeJwt | None = None
        self._metrics: MetricsEndpoint | None = None
        self._closed = asyncio.Event()
        self._stopping = False
        self._started = False
        self.notes: list[str] = []

    # -- read-only views ---------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def identity(self) -> IdentitySnapshot:
        return self.source.current()

    @property
    def spiffe_id(self) -> SpiffeID:
        return self.identity.spiffe_id

    @property
    def source(self) -> IdentitySource:
        if self._source is None:
            raise NotStartedError("node: not started; call start() (or use `async with Node(...)`) first")
        return self._source

    @property
    def port(self) -> int:
        """The port the node listens on (0 before start, and for a client-only node)."""
        return self._server.port if self._server else 0

    @property
    def address(self) -> str | None:
        """``host:port`` the node serves on; None for a client-only node."""
        if self.config.listen is None:
            return None
        host, _ = self.config.host_port
        return f"{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return bool(self._state and self._state.serving)

    @property
    def metrics_url(self) -> str | None:
        """``http://host:port/metrics`` once started with ``[telemetry] prometheus``; else None."""
        return self._metrics.url if self._metrics is not None else None

    @property
    def authorizer(self) -> Authorizer | None:
        """The node's authorizer once started (None for a client-only node)."""
        return self._authorizer

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Obtain the identity, pass the checks, bind and serve. Raises MeshnodeError."""
        if self._started:
            raise AlreadyStartedError("node: start() called twice; a Node starts once (make a new one)")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self._teardown(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        self._boot = plan = await asyncio.to_thread(
            boot, config, self._services, source=self._given_source, generic=self._handlers,
            options=self._options, on_error=_count_source_error,
        )
        self.notes.extend(plan.notes)
        plan.enforce()
        source = self._source = plan.hand_over()
        self._jwt = plan.take_jwt() if plan.jwt is not None else NodeJwt()
        snapshot = source.current()
        tracing = _tracing_enabled(self._tracer_provider)
        telemetry = config.telemetry
        rpc_metrics = RpcMetrics(telemetry.max_peer_ids) if telemetry.prometheus is not None else None
        if plan.server is not None:
            self._authorizer = plan.authorizer(
                span_attributes={LOCAL_SPIFFE_ID: str(snapshot.spiffe_id), NODE_NAME: config.name},
                record_spans=tracing, jwt=self._jwt.authn, rpc_metrics=rpc_metrics,
            )
            spans = None
            if tracing:
                from meshnode.telemetry.serverspans import ServerSpans

                spans = ServerSpans(self._tracer_provider)
            self._server = MeshServer(
                plan.server, gate=self._authorizer.check, spans=spans, interceptors=self._interceptors,
            )
            for service in plan.services:
                if isinstance(service, NodeService):
                    service.bind(self)
            self._creds = ServerCredentials(source, plan.accepted)
            self._server.bind(plan.server.listen, self._creds.credentials)
        assert plan.peers is not None
        self._peers = PeerChannels(
            source, plan.peers.peers, node_name=config.name, liveness=plan.peers.liveness,
            tracing=tracing, tracer_provider=self._tracer_provider, call_auth=self._jwt.call_auth,
            resolved=plan.peers.resolved,
            rpc_metrics=rpc_metrics,
        )
        await self._peers.start()
        if telemetry.prometheus is not None:
            self._metrics = self._metrics_endpoint(telemetry.prometheus, rpc_metrics)
            self._metrics.start()  # before serving: a port in use stops the node before it takes a call
        if self._server is not None:
            await self._server.start()
        self._state = (
            IdentityState(source, self._server.set_serving, served=self._creds)
            if self._server is not None and self._creds is not None
            else IdentityState(source, _no_health)
        )
        self._state.start()
        if self._server is not None:
            log.info(
                "node: %s serving %s on %s as %s (mode %s)",
                config.name, ", ".join(self._server.service_names) or "no services",
                self.address, snapshot.spiffe_id, config.mode,
            )
        else:
            log.info("node: %s up as %s, client only (mode %s)", config.name, snapshot.spiffe_id, config.mode)

    def _metrics_endpoint(self, address: str, rpc_metrics: RpcMetrics | None) -> MetricsEndpoint:
        from meshnode.telemetry.prometheus import MetricsEndpoint, NodeCollector

        host, port = parse_address(address, "[telemetry] prometheus")
        collector = NodeCollector(
            self.config.name, lambda: str(self.source.current().spiffe_id), instruments=instruments(),
            rpc_metrics=rpc_metrics, decisions=self._authorizer.decisions if self._authorizer is not None else None,
        )
        return MetricsEndpoint(host, port, [collector])

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, drain in-flight calls up to ``grace`` seconds
        (default [node] shutdown_grace), close channels and sources. Idempotent."""
        if self._stopping:
            await self._closed.wait()
            return
        self._stopping = True
        await self._teardown(self.config.shutdown_grace if grace is None else grace)

    async def _teardown(self, grace: float) -> None:
        self._stopping = True
        try:
            if self._state is not None:
                await self._state.close()
            if self._server is not None:
                cancelled = await self._server.stop(grace)
                if cancelled:  # expected when calls outlive shutdown_grace: one line, no traceback per call
                    log.warning(
                        "node: %s: %d call(s) still running after the %.1f s shutdown grace were cancelled "
                        "(their callers see UNAVAILABLE)", self.name, cancelled, grace,
                    )
            if self._peers is not None:
                await self._peers.close()
            if self._metrics is not None:
                self._metrics.close()
            if self._authorizer is not None:
                self._authorizer.close()
            if self._jwt is not None:
                self._jwt.close()
            if self._boot is not None:
                self._boot.close()
            if self._creds is not None:
                self._creds.close()
            if isinstance(self._source, GuardedSource):
                self._source.close()  # unsubscribes; closes the source it wraps if boot opened it
            elif self._source is not None and self._owns_source:
                self._source.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_until_signal(self, *, ready: Callable[[Node], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully; starts the node first if needed.

        The signal handlers are installed before anything else, so a signal at any moment
        (during start, right after ``ready(node)`` is called) stops the node cleanly. A second
        signal during the shutdown grace ends the grace at once (in-flight calls are cancelled);
        the node still closes cleanly.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        hurry: list[asyncio.Task[None]] = []

        def on_signal(sig: signal.Signals) -> None:
            if not stop.is_set():
                stop.set()
                return
            if not hurry:
                log.warning("node: %s again: stopping now, without waiting for in-flight calls", sig.name)
                hurry.append(loop.create_task(self._stop_now()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            if not self._started:
                await self.start()
            if ready is not None:
                ready(self)
            await stop.wait()
            log.info("node: %s stopping (grace %.1f s)", self.name, self.config.shutdown_grace)
            await self.stop()
            await asyncio.gather(*hurry)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _stop_now(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- peers -------------------------------------------------------------

    def peer(self, name: str) -> PeerConfig:
        try:
            return self.config.peers[name]
        except KeyError:
            known = ", ".join(sorted(self.config.peers)) or "none"
            raise PeerError(reason=f"no peer named {name!r} in [peers] (configured: {known})",
                            component="node") from None

    def channel(self, peer: str) -> PeerChannel:
        """The channel to a configured peer (a grpc.aio.Channel look-alike that survives rotation)."""
        if self._peers is None:
            raise NotStartedError("node: not started; peers are reached once start() returned")
        return self._peers.channel(peer)

    def stub(self, peer: str, stub_class: type[T]) -> T:
        """A generated stub on the channel to ``peer``; cached per (peer, stub class)."""
        if self._peers is None:
            raise NotStartedError("node: not started; peers are reached once start() returned")
        return self._peers.stub(peer, stub_class)


async def _no_health(serving: bool) -> None:
    """A client-only node has no health service to update."""


def _count_source_error(message: str) -> None:
    """Identity source errors (the source keeps the last good SVID and logs them itself)."""
    instruments().source_error("identity_source")
