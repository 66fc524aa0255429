"""The embedded ADS server: state-of-the-world xDS on one unix socket.

gRPC opens one ADS stream per ``xds:///`` target (one xDS client each) and
subscribes by name to a Listener and a Cluster. Per stream and resource
type the server keeps the protocol state (:class:`StreamState`, no I/O, so
it is tested on its own):

* every response carries the type's ``version_info`` and a fresh ``nonce``;
* a request echoing the last nonce is an ACK, or a NACK when it carries
  ``error_detail``: a NACK is logged and kept (:attr:`AdsServer.nacks`) and
  the server waits for a change instead of resending what was refused;
* a request echoing an older nonce is stale and ignored, as the protocol
  says (the client's answer to the newest response follows);
* a response is sent only when what the stream subscribes to changed,
  so one peer's update does not disturb the streams of the others.

:meth:`AdsServer.set_resources` may be called from any thread; it bumps the
version of each type whose content changed and pushes to every stream.
The socket is plaintext: it must sit in a private (0700) directory.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meshnode.errors import ServeError
from meshnode.xds.resources import Resources
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import pack

__all__ = ["ADS_SERVICE", "AdsServer", "Nack", "ServedResources", "StreamState"]

#: The service gRPC's xDS client calls (envoy/service/discovery/v3/ads.proto); its one method,
#: StreamAggregatedResources, is registered by hand (meshnode carries no copy of the Envoy API).
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

log = logging.getLogger("meshnode.xds")

_UPDATE = object()


@dataclass(frozen=True)
class Nack:
    """gRPC refused a response: which type, which version, and its reason."""

    node_id: str
    type_url: str
    version: str
    message: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ServedResources:
    """What the server serves, packed once: type URL -> (version, name -> Any)."""

    versions: dict[str, str]
    packed: dict[str, dict[str, Any]]

    def key(self, type_url: str, names: Iterable[str]) -> tuple[tuple[str, bytes], ...]:
        found = self.packed.get(type_url, {})
        return tuple((n, found[n].value) for n in sorted(names) if n in found)

    def updated(self, resources: Resources) -> ServedResources:
        versions, packed = dict(self.versions), {}
        for type_url in set(resources) | set(self.packed):
            new = {name: pack(message) for name, message in resources.get(type_url, {}).items()}
            old = self.packed.get(type_url, {})
            if {n: a.value for n, a in new.items()} != {n: a.value for n, a in old.items()}:
                versions[type_url] = str(int(versions.get(type_url, "0")) + 1)
            packed[type_url] = new
        return ServedResources(versions, packed)


@dataclass
class _TypeState:
    names: frozenset[str] = frozenset()
    nonce: str | None = None  # of the last response sent
    version: str = ""  # of the last response sent
    sent: tuple[tuple[str, bytes], ...] | None = None
    acked_nonce: str | None = None


class StreamState:
    """The state-of-the-world protocol for one stream; returns responses to send."""

    def __init__(self) -> None:
        self.node_id = ""
        self._types: dict[str, _TypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: Any, served: ServedResources) -> tuple[list[Any], Nack | None]:
        if request.HasField("node") and request.node.id:
            self.node_id = request.node.id
        state = self._types.setdefault(request.type_url, _TypeState())
        if request.response_nonce and request.response_nonce != state.nonce:
            return [], None  # stale: answers an older response
        nack = None
        if request.response_nonce:
            if request.HasField("error_detail"):
                nack = Nack(self.node_id, request.type_url, state.version, request.error_detail.message)
            else:
                state.acked_nonce = request.response_nonce
        state.names = frozenset(request.resource_names)
        return self._respond(request.type_url, state, served, initial=not request.response_nonce), nack

    def on_update(self, served: ServedResources) -> list[Any]:
        out: list[Any] = []
        for type_url, state in self._types.items():
            out.extend(self._respond(type_url, state, served, initial=False))
        return out

    def _respond(
        self, type_url: str, state: _TypeState, served: ServedResources, *, initial: bool
    ) -> list[Any]:
        key = served.key(type_url, state.names)
        if not state.names and state.sent is None:
            return []  # gRPC always subscribes by name; nothing asked, nothing to say
        if key == state.sent and not initial:
            return []
        state.nonce = str(next(self._nonces))
        state.version = served.versions.get(type_url, "0")
        state.sent = key
        found = served.packed.get(type_url, {})
        response = pb.DiscoveryResponse(
            version_info=state.version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[found[name] for name, _ in key],
        )
        return [response]

    def settled(self, served: ServedResources) -> bool:
        """True when the client ACKed the current content of everything it subscribes to."""
        return all(
            st.nonce is not None and st.acked_nonce == st.nonce and st.sent == served.key(t, st.names)
            for t, st in self._types.items()
            if st.names
        )


class AdsServer:
    """A grpc.aio ADS server on ``unix:<socket_path>``."""

    def __init__(self, socket_path: Path, resources: Resources | None = None) -> None:
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._served = ServedResources({}, {})
        self._streams: dict[asyncio.Queue[Any], StreamState] = {}
        self._nacks: collections.deque[Nack] = collections.deque(maxlen=32)
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()
        self._progress = asyncio.Event()
        if resources is not None:
            self.set_resources(resources)

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def nacks(self) -> tuple[Nack, ...]:
        return tuple(self._nacks)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def resource_names(self) -> dict[str, list[str]]:
        """What is served now: type URL -> sorted resource names."""
        return {type_url: sorted(named) for type_url, named in self._served.packed.items()}

    def set_resources(self, resources: Resources) -> bool:
        """Serve ``resources`` from now on; thread-safe. True if anything changed."""
        with self._lock:
            before = self._served
            self._served = before.updated(resources)
            changed = self._served.versions != before.versions
            loop = self._loop
        if changed and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._broadcast)
        return changed

    def _broadcast(self) -> None:
        for queue in self._streams:
            queue.put_nowait(_UPDATE)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.StreamAggregatedResources,
                request_deserializer=pb.DiscoveryRequest.FromString,
                response_serializer=pb.DiscoveryResponse.SerializeToString,
            ),
        }),))
        try:
            server.add_insecure_port(f"unix:{self.socket_path}")
        except RuntimeError as exc:
            raise ServeError(reason=f"cannot listen on unix:{self.socket_path}: {exc}", component="xds") from exc
        await server.start()
        self._server = server
        log.debug("xds: ADS server listening on unix:%s", self.socket_path)

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (streams end; gRPC keeps its cached config); idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        # end every open stream first (the handler returns normally), so none is cancelled mid-way
        for queue in list(self._streams):
            queue.put_nowait(None)
        deadline = time.monotonic() + 1.0
        while self._streams and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await server.stop(grace)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every open stream ACKed what it subscribes to; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self._progress.clear()
            served = self._served
            if all(stream.settled(served) for stream in self._streams.values()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                return False

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stream = StreamState()
        self._streams[queue] = stream

        async def pump() -> None:
            try:
                async for request in request_iterator:
                    queue.put_nowait(request)
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(pump())
        try:
            while (item := await queue.get()) is not None:
                if item is _UPDATE:
                    responses = stream.on_update(self._served)
                else:
                    responses, nack = stream.on_request(item, self._served)
                    if nack is not None:
                        self._nacks.append(nack)
                        log.warning("xds: gRPC (node %s) rejected %s version %s: %s", nack.node_id,
                                    nack.type_url.rsplit(".", 1)[-1], nack.version, nack.message)
                for response in responses:
                    yield response
                self._progress.set()
        finally:
            reader.cancel()
            del self._streams[queue]
            self._progress.set()

    async def __aenter__(self) -> AdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
