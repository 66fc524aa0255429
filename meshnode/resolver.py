"""A peer's endpoints now: resolve what ``address`` / ``addresses`` name.

* IP literals are endpoints as they are;
* ``dns:///host:port`` and host names in ``addresses``: the system's
  resolver (``getaddrinfo``: ``/etc/hosts``, ``/etc/resolv.conf`` with its
  search domains, as in a Kubernetes pod), every address it gives;
* ``dns://SERVER/host:port``: that DNS server, asked directly
  (:mod:`meshnode.dnsquery`), A then AAAA records;
* ``host:port`` (one logical endpoint, resolved by gRPC on each connect):
  resolved here only to show it (``meshnode check``).

Blocking (run it on a worker thread). At most
:data:`~meshnode.config.targets.MAX_ENDPOINTS` endpoints come back, in the
order the resolver gave them, without duplicates. Failures raise
:class:`~meshnode.errors.PeerError`; an answer with no address (NXDOMAIN,
no records) is an empty result, not an error: the service has no endpoints
now.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from meshnode.config.targets import MAX_ENDPOINTS, EndpointSpec, HostPort
from meshnode.dnsquery import AAAA, A, query
from meshnode.errors import PeerError

__all__ = ["DEFAULT_TTL", "MIN_TTL", "Resolution", "resolve"]

#: Seconds an answer is kept when the resolver says nothing about it (the system's) or says more
DEFAULT_TTL = 30.0
#: Seconds an answer is kept at least, whatever its TTL (a TTL of 0 must not become a query loop)
MIN_TTL = 1.0


@dataclass(frozen=True)
class Resolution:
    """The endpoints of a peer now, how long to keep them, and whether some were cut off."""

    endpoints: tuple[HostPort, ...]
    ttl: float = DEFAULT_TTL
    dropped: int = 0  # endpoints beyond MAX_ENDPOINTS, left out


def _system(host: str, port: int) -> list[HostPort]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []  # no such name (now): no endpoints
        raise PeerError(reason=f"cannot resolve {host}: {exc.strerror}", component="resolver") from None
    except (OSError, UnicodeError) as exc:
        raise PeerError(reason=f"cannot resolve {host}: {exc}", component="resolver") from None
    return [HostPort(str(info[4][0]).partition("%")[0], port) for info in infos]


def _server(server: HostPort, host: str, port: int, timeout: float) -> tuple[list[HostPort], float]:
    out: list[HostPort] = []
    ttl = DEFAULT_TTL
    for rtype in (A, AAAA):
        try:
            answer = query((server.host, server.port), host, rtype, timeout)
        except PeerError as exc:
            raise PeerError(reason=exc.reason, component="resolver") from None
        out += [HostPort(address, port) for address in answer.addresses]
        if answer.ttl is not None:
            ttl = min(ttl, float(answer.ttl))
    return out, ttl


def resolve(spec: EndpointSpec, timeout: float = 3.0) -> Resolution:
    """The endpoints ``spec`` names now; raises PeerError when a resolver fails."""
    found: list[HostPort] = []
    ttl = DEFAULT_TTL
    for hp in spec.hosts:
        if hp.ip is not None:
            found.append(hp)
        elif spec.authority is not None:
            addresses, answer_ttl = _server(spec.authority, hp.host, hp.port, timeout)
            found += addresses
            ttl = min(ttl, answer_ttl)
        else:
            found += _system(hp.host, hp.port)
    unique = tuple(dict.fromkeys(found))
    return Resolution(unique[:MAX_ENDPOINTS], max(ttl, MIN_TTL), max(len(unique) - MAX_ENDPOINTS, 0))
