"""Public helpers for testing code built on meshnode.

Real parts only: a dev CA made at test time, snapshots issued by it, manual
identity sources you rotate by hand, and loopback helpers. Nothing here
mocks TLS or gRPC.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509

from meshnode.authz.context import CURRENT_CALLER, Caller
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import StaticSource
from meshnode.identity.x509svid import build_snapshot
from meshnode.jwtsvid.token import JwtSvid
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

__all__ = [
    "ManualSource",
    "as_caller",
    "free_port",
    "issue_snapshot",
    "short_tmpdir",
]


def issue_snapshot(
    ca: DevCA,
    spiffe_id: str,
    *,
    ttl: dt.timedelta = dt.timedelta(hours=1),
    dns_names: tuple[str, ...] = (),
    map_dns: bool = True,
    federated: Iterable[DevCA] = (),
) -> IdentitySnapshot:
    """An SVID from ``ca`` with ``ca``'s bundle, plus the bundles of ``federated`` CAs."""
    issued = ca.issue(spiffe_id, ttl, dns_names=dns_names, map_dns=map_dns)
    bundles: dict[str, tuple[x509.Certificate, ...]] = {ca.trust_domain: ca.bundle}
    for other in federated:
        bundles[other.trust_domain] = other.bundle
    return build_snapshot(issued.chain, issued.private_key, bundles)


class ManualSource(StaticSource):
    """An identity source rotated by hand: ``rotate()`` issues a new SVID from its CA."""

    def __init__(
        self,
        ca: DevCA,
        spiffe_id: str,
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        map_dns: bool = True,
        federated: Iterable[DevCA] = (),
    ) -> None:
        self.ca = ca
        self._id = spiffe_id
        self._ttl = ttl
        self._map_dns = map_dns
        self._federated = tuple(federated)
        super().__init__(self._issue(), description=f"manual source for {spiffe_id}")

    def _issue(self) -> IdentitySnapshot:
        return issue_snapshot(self.ca, self._id, ttl=self._ttl, map_dns=self._map_dns, federated=self._federated)

    def rotate(self) -> IdentitySnapshot:
        published = self.set(self._issue())
        assert published is not None
        return published


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Racy by nature: anything on the machine may take the port before the code
    under test binds it. Prefer listening on port 0 and reading the port back
    (``Node.port``; the ``meshnode run`` ready line ``node NAME ready on HOST:PORT``);
    use this only where a port must be known before anything can listen on it.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_tmpdir(prefix: str = "mn-") -> Path:
    """A fresh directory under /tmp with a short path (unix sockets need < 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.contextmanager
def as_caller(
    spiffe_id: str | SpiffeID, *, mtls: str | SpiffeID | None = None, jwt: JwtSvid | None = None
) -> Iterator[SpiffeID]:
    """Within the block, ``peer_id()`` is ``spiffe_id``: call a handler directly, as that peer.

    ``peer_mtls_id()`` is ``mtls`` (default: ``spiffe_id``), ``peer_jwt()`` is ``jwt``.

    ```python
    with as_caller("spiffe://example.org/node/alpha"):
        reply = await Greeter().Say(request, context)
    ```

    Only ``peer_id()`` changes: no policy is consulted (test the policy through a Node).
    """
    peer = spiffe_id if isinstance(spiffe_id, SpiffeID) else parse_spiffe_id(spiffe_id)
    tls = peer if mtls is None else mtls if isinstance(mtls, SpiffeID) else parse_spiffe_id(mtls)
    token = CURRENT_CALLER.set(Caller(peer, tls, jwt))
    try:
        yield peer
    finally:
        CURRENT_CALLER.reset(token)
