"""EndpointHealth: the health of each endpoint of a spiffe-id peer, as its server reports it.

gRPC's xDS client does no client-side health checking (gRFC A17 is not
applied to xDS clusters, grpc/grpc#34581); the control plane is expected
to know. meshnode's control plane runs in the node, so the node watches:
for every endpoint of a spiffe-id peer with an endpoint list, one
``grpc.health.v1.Health/Watch`` stream on a channel of its own
(``xds:///meshnode.health.<peer>.<endpoint>``, the peer's TLS and SAN
matcher, that one endpoint), and an endpoint whose server says
NOT_SERVING is served as DRAINING in the peer's EDS
(:meth:`XdsControlPlane.set_draining
<meshnode.xds.control_plane.XdsControlPlane.set_draining>`): gRPC sends it
no new calls, the ones in flight finish. A meshnode server says NOT_SERVING
when it starts to stop, then drains (:mod:`meshnode.server`), so a replica
stopped with SIGTERM fails no call.

A server without the health service (UNIMPLEMENTED) counts as serving.
When the stream breaks (the server went away, or is not up yet) the
endpoint keeps its last status and the watch starts again, backing off
up to 30 s, waiting for the endpoint to be reachable: a dead endpoint is
gRPC's to route around. Each watch costs one more connection per
endpoint, one xDS stream and one idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshnode.config.targets import HostPort
from meshnode.xds.control_plane import XdsControlPlane

__all__ = ["EndpointHealth"]

log = logging.getLogger("meshnode.peers")

_MAX_BACKOFF = 30.0


class EndpointHealth:
    """One health watch per endpoint of the peers given to :meth:`update`; :meth:`close` ends them."""

    def __init__(self, control_plane: XdsControlPlane, options: tuple[tuple[str, object], ...] = ()) -> None:
        self._cp = control_plane
        self._options = options
        self._watches: dict[tuple[str, HostPort], asyncio.Task[None]] = {}
        self._seen: dict[tuple[str, HostPort], bool] = {}  # a status arrived from the endpoint

    def update(self, peer: str, endpoints: tuple[HostPort, ...]) -> None:
        """Watch exactly ``endpoints`` of ``peer`` from now on (on the event loop)."""
        wanted = set(endpoints)
        for key in [k for k in self._watches if k[0] == peer and k[1] not in wanted]:
            self._watches.pop(key).cancel()
            self._seen.pop(key, None)
            self._cp.drop_health_target(*key)
        for endpoint in endpoints:
            if (peer, endpoint) not in self._watches:
                self._watches[(peer, endpoint)] = asyncio.ensure_future(self._watch(peer, endpoint))

    @property
    def watched(self) -> int:
        return len(self._watches)

    async def _watch(self, peer: str, endpoint: HostPort) -> None:
        target = self._cp.health_target(peer, endpoint)
        backoff = 1.0
        async with grpc.aio.secure_channel(target, self._cp.channel_credentials(), options=self._options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    async for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True):
                        if (peer, endpoint) not in self._seen:
                            log.debug("peers: watching the health of endpoint %s of peer '%s': %s", endpoint, peer,
                                      health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                        self._seen[(peer, endpoint)] = True
                        self._set(peer, endpoint, reply.status == health_pb2.HealthCheckResponse.SERVING)
                        backoff = 1.0
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self._set(peer, endpoint, True)
                        return
                    log.debug("peers: health watch of %s (peer '%s') ended: %s", endpoint, peer, err.code().name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _set(self, peer: str, endpoint: HostPort, serving: bool) -> None:
        if self._cp.set_draining(peer, endpoint, not serving):
            log.info("peers: endpoint %s of peer '%s' %s", endpoint, peer,
                     "is serving again" if serving else "says NOT_SERVING: no new calls go there")

    async def close(self) -> None:
        """End every watch; idempotent."""
        watches, self._watches = self._watches, {}
        for task in watches.values():
            task.cancel()
        for task in watches.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
