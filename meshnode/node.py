"""The node: composition root and lifecycle.

``Node`` wires the pieces in one direction: identity source -> snapshot ->
server credentials / peer channels -> authorization -> handlers. Rotation is
a new snapshot flowing the same way.

```python
async with Node(load_node_config("node.toml"), services=[Greeter()]) as node:
    await node.wait_closed()
```
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry import trace

from meshnode.authz.node import build_node_authorizer
from meshnode.config.node import NodeConfig, PeerConfig
from meshnode.credentials import ServerCredentials
from meshnode.errors import ClosedError, PeerError
from meshnode.identity.guard import GuardedSource
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource
from meshnode.identity_state import IdentityState
from meshnode.peers import PeerChannels
from meshnode.preflight import (
    enforce,
    identity_checks,
    identity_rules,
    missing_bundles,
    open_identity,
    static_checks,
)
from meshnode.server import MeshServer
from meshnode.service import NodeService, load_service_class, registration_of
from meshnode.spiffeid import SpiffeID
from meshnode.telemetry.attributes import LOCAL_SPIFFE_ID, NODE_NAME

__all__ = ["Node"]

log = logging.getLogger("meshnode.node")

T = TypeVar("T")


def _tracing_enabled(tracer_provider: Any) -> bool:
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
        tracer_provider: Any = None,
    ) -> None:
        self.config = config
        self._services = list(services)
        self._given_source = source
        self._tracer_provider = tracer_provider
        self._source: IdentitySource | None = None
        self._owns_source = source is None
        self._server: MeshServer | None = None
        self._creds: ServerCredentials | None = None
        self._state: IdentityState | None = None
        self._peers: PeerChannels | None = None
        self._authorizer: Any = None
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
        if self._source is None:
            raise ClosedError("node: not started")
        return self._source.current()

    @property
    def spiffe_id(self) -> SpiffeID:
        return self.identity.spiffe_id

    @property
    def source(self) -> IdentitySource:
        if self._source is None:
            raise ClosedError("node: not started")
        return self._source

    @property
    def port(self) -> int:
        return self._server.port if self._server else 0

    @property
    def address(self) -> str:
        host, _ = self.config.host_port
        return f"{host}:{self.port}"

    @property
    def serving(self) -> bool:
        return bool(self._state and self._state.serving)

    @property
    def authorizer(self) -> Any:
        return self._authorizer

    # -- lifecycle ---------------------------------------------------------

    def _load_services(self) -> list[object]:
        services = list(self._services)
        for spec in self.config.services:
            services.append(load_service_class(spec)())
        return services

    async def start(self) -> None:
        """Obtain the identity, pass the checks, bind and serve. Raises MeshnodeError."""
        if self._started:
            raise ClosedError("node: start() called twice")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self._teardown(grace=0)
            raise

    async def _start(self) -> None:
        config = self.config
        services = self._load_services()
        declares = any(getattr(type(s), "allow", ()) for s in services)
        enforce(config, static_checks(config, service_policies=declares))
        source: IdentitySource
        if self._given_source is not None:
            source = self._given_source
        else:
            source, notes = await asyncio.to_thread(open_identity, config, on_error=_count_source_error)
            self.notes.extend(notes)
        self._source = source
        snapshot = source.current()
        enforce(config, identity_checks(config, snapshot))
        # From here on every consumer sees only updates that keep the node's trust domain (and ID)
        source = self._source = GuardedSource(
            source, identity_rules(config, snapshot), snapshot, owns_inner=self._owns_source
        )
        for td in missing_bundles(config, snapshot):
            log.warning(
                "node: no trust bundle for trust domain '%s' (federates_with or a peer): its workloads cannot "
                "be verified until the identity source delivers one (SPIRE federation, federated_bundles_dir)", td,
            )
        accepted = config.identity.accepted_trust_domains(snapshot.trust_domain)
        tracing = _tracing_enabled(self._tracer_provider)
        self._authorizer = build_node_authorizer(
            config, services, source, accepted, tracer_provider=self._tracer_provider,
            span_attributes={LOCAL_SPIFFE_ID: str(snapshot.spiffe_id), NODE_NAME: config.name},
            record_spans=tracing,
        )
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracing:
            from meshnode.telemetry.grpc import server_interceptors

            interceptors = server_interceptors(self, self._tracer_provider)
        options: list[tuple[str, Any]] = []
        if config.max_connection_age > 0:
            # TLS authenticates a connection once, at its handshake: bound how long a connection (and the
            # certificates it was made with) lives. In-flight calls and streams finish (no grace limit).
            options.append(("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)))
        self._server = MeshServer(wrap=self._authorizer.wrap_handler, interceptors=interceptors, options=options)
        for service in services:
            if isinstance(service, NodeService):
                service.bind(self)
            for _name, add in registration_of(service):
                self._server.add(add, service)
        self._creds = ServerCredentials(source, accepted)
        self._server.bind(config.listen, self._creds.credentials)
        self._peers = PeerChannels(self, config.peers, tracing=tracing, tracer_provider=self._tracer_provider)
        await self._peers.start()
        await self._server.start()
        self._state = IdentityState(source, self._server.set_serving, served=self._creds)
        self._state.start()
        log.info(
            "node: %s serving %s on %s as %s (mode %s)",
            config.name, ", ".join(self._server.service_names) or "no services",
            self.address, snapshot.spiffe_id, config.mode,
        )

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
                await self._server.stop(grace)
            if self._peers is not None:
                await self._peers.close()
            if self._authorizer is not None:
                self._authorizer.close()
            if self._creds is not None:
                self._creds.close()
            if isinstance(self._source, GuardedSource):
                self._source.close()  # closes the source it wraps if the node opened it
            elif self._source is not None and self._owns_source:
                self._source.close()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            log.info("node: %s stopping (grace %.1f s)", self.name, self.config.shutdown_grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await self.stop()

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
            raise PeerError(f"node: no peer named {name!r} in [peers] (configured: {known})") from None

    def channel(self, peer: str) -> Any:
        """The channel to a configured peer (a grpc.aio.Channel look-alike)."""
        if self._peers is None:
            raise ClosedError("node: not started")
        return self._peers.channel(peer)

    def stub(self, peer: str, stub_class: type[T]) -> T:
        """A generated stub on the channel to ``peer``; cached per (peer, stub class)."""
        if self._peers is None:
            raise ClosedError("node: not started")
        return self._peers.stub(peer, stub_class)


def _count_source_error(message: str) -> None:
    """Identity source errors (the source keeps the last good SVID and logs them itself)."""
    from meshnode.telemetry.instruments import instruments

    instruments().source_error("identity_source")
