"""How a ``verify = "dns"`` peer's channel reaches its endpoints: target and service config.

A dns-mode channel is a plain gRPC channel, so balancing and retries come
from its service config (passed as the ``grpc.service_config`` option; the
DNS resolver asks for none of its own):

* ``loadBalancingConfig``: ``round_robin`` (a connection to every endpoint,
  one call each in turn, endpoints whose connection failed skipped) or
  ``pick_first``;
* ``healthCheckConfig`` with round robin: gRPC watches each endpoint's
  ``grpc.health.v1`` status and skips one that is NOT_SERVING (a node
  draining before it stops, see :mod:`meshnode.server`);
* ``methodConfig[].retryPolicy`` for every method: ``retries + 1``
  attempts on the ``retry_on`` codes, backoff from 25 ms doubling up to
  250 ms (gRPC adds jitter), within the call's deadline.

The target is gRPC's own form of the configured endpoints
(:func:`grpc_target`): ``host:port`` and ``dns:///...`` as configured (gRPC
resolves them, re-resolving when a connection fails; meshnode also
re-resolves on its schedule and rebuilds the channel when the answer
changed), ``ipv4:``/``ipv6:`` lists for endpoint lists.
"""

from __future__ import annotations

import hashlib
import json
import logging

from meshnode.config.node import PeerConfig
from meshnode.config.targets import HostPort
from meshnode.errors import PeerError
from meshnode.xds.resources import RETRY_BASE_INTERVAL, RETRY_MAX_INTERVAL

__all__ = ["channelz_target", "endpoints_key", "grpc_target", "list_target", "service_config"]

log = logging.getLogger("meshnode.peers")


def service_config(peer: PeerConfig) -> str:
    """The service config JSON of ``peer``'s channels: its balancing and retry policy."""
    config: dict[str, object] = {"loadBalancingConfig": [{peer.lb: {}}]}
    if peer.lb == "round_robin":
        # client-side health checking (gRFC A17): an endpoint whose server says NOT_SERVING (draining
        # before it stops, or without a valid identity) gets no new calls; servers without the
        # health service count as serving
        config["healthCheckConfig"] = {"serviceName": ""}
    if peer.retries > 0:
        config["methodConfig"] = [{
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": peer.retries + 1,
                "initialBackoff": f"{RETRY_BASE_INTERVAL}s",
                "maxBackoff": f"{RETRY_MAX_INTERVAL}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": list(peer.retry_on),
            },
        }]
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def list_target(peer_name: str, endpoints: tuple[HostPort, ...]) -> str:
    """``ipv4:a:p,b:p`` or ``ipv6:[a]:p,...``: a gRPC target listing IP endpoints of one family.

    gRPC takes one address family per list; when a list holds both, the
    family with more endpoints is used and the others are left out (logged).
    """
    if not endpoints:
        raise PeerError(reason=f"peer '{peer_name}' has no endpoints now (its names resolve to no address)",
                        component="peers")
    v4 = [e for e in endpoints if e.ip is not None and e.ip.version == 4]
    v6 = [e for e in endpoints if e.ip is not None and e.ip.version == 6]
    if v4 and v6:
        log.warning("peers: peer '%s' has IPv4 and IPv6 endpoints; gRPC lists one family per target, so the "
                    "%d %s ones are left out (use dns:/// to have gRPC take both)", peer_name,
                    min(len(v4), len(v6)), "IPv6" if len(v4) >= len(v6) else "IPv4")
    if len(v4) >= len(v6):
        return "ipv4:" + ",".join(str(e) for e in v4)
    return "ipv6:" + ",".join(str(e) for e in v6)


def endpoints_key(endpoints: tuple[HostPort, ...]) -> str:
    """A short fingerprint of an endpoint list: a channel is rebuilt when it changes."""
    return hashlib.sha256(",".join(str(e) for e in endpoints).encode()).hexdigest()[:16]


def grpc_target(peer: PeerConfig, resolved: tuple[HostPort, ...] | None) -> tuple[str, str]:
    """(gRPC target, endpoint key) of a dns-mode peer; ``resolved``: what meshnode's watch resolved."""
    spec = peer.endpoints
    if spec.kind == "single":
        return peer.address, ""
    if spec.kind == "dns":  # gRPC resolves it; the key changes when meshnode's own resolution did
        return peer.address, endpoints_key(resolved or ())
    if not spec.resolved_by_meshnode:
        return list_target(peer.name, spec.hosts), ""
    endpoints = resolved or ()
    return list_target(peer.name, endpoints), endpoints_key(endpoints)


def channelz_target(target: str) -> str:
    """The target as channelz names the channel: gRPC puts ``dns:///`` before a bare ``host:port``."""
    if target.startswith(("dns:", "ipv4:", "ipv6:", "unix:", "xds:")):
        return target
    return f"dns:///{target}"
