"""EndpointMonitor: notices failed connections to peer endpoints, and endpoints gRPC refused.

Once a second it reads the subchannels of the node's peer channels from
channelz (:mod:`meshnode.channelz`). For every new connection failure of an
endpoint it

* asks the peer's endpoint watch to re-resolve (:meth:`EndpointWatch.refresh
  <meshnode.endpoint_watch.EndpointWatch.refresh>`): a replica that went
  away may have been replaced at another address;
* when gRPC refused the endpoint's *identity* (the xDS SAN matcher in
  ``spiffe-id`` mode, the host name check in ``dns`` mode, or a chain its
  trust domain's bundle does not verify), looks at the certificate the
  endpoint presents (:func:`meshnode.probe.server_certificate`, without
  trusting it: the verdict was gRPC's) and logs it once per endpoint and
  presented identity, naming both and the identity expected, and counts it
  in ``meshnode.peer.endpoint_rejected``.

Such an endpoint gets no calls: its handshakes fail, so the balancer never
picks it. The monitor only reports; it never decides who is trusted.
Probing is rate-limited per endpoint (:data:`PROBE_INTERVAL`), and at most
:data:`MAX_REMEMBERED` (endpoint, identity) pairs are remembered, so a DNS
answer full of impostors cannot grow memory or flood the log without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from meshnode.channelz import SubchannelView, read_subchannels
from meshnode.config._reader import printable
from meshnode.errors import PeerError
from meshnode.probe import server_certificate
from meshnode.spiffeid import SpiffeID
from meshnode.telemetry.instruments import Instruments, instruments

__all__ = ["MAX_REMEMBERED", "PROBE_INTERVAL", "EndpointMonitor", "MonitoredPeer", "Rejection", "identity_failure"]

log = logging.getLogger("meshnode.peers")

#: Seconds between two looks at the certificate of one endpoint.
PROBE_INTERVAL = 30.0
#: (endpoint, identity) pairs remembered for logging once; past it, the oldest are forgotten.
MAX_REMEMBERED = 1024


def identity_failure(failure: str | None) -> str | None:
    """Why gRPC refused an endpoint's identity, from its failure text: ``spiffe_id``, ``dns_name``,
    ``chain``; None for other failures (refused, reset, timeout)."""
    if not failure:
        return None
    lowered = failure.lower()
    if "sans from certificate did not match" in lowered:
        return "spiffe_id"
    if "hostname verification check failed" in lowered or "not in peer certificate" in lowered:
        return "dns_name"
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        return "chain"
    return None


@dataclass(frozen=True)
class MonitoredPeer:
    """What the monitor knows of a peer: its name, the identity its endpoints must present, its DNS name
    (dns mode), and what to call when one of its endpoints fails."""

    name: str
    spiffe_id: SpiffeID
    tls_name: str | None
    on_failure: Callable[[], None]


@dataclass(frozen=True)
class Rejection:
    """One endpoint of a peer whose identity gRPC refused, and what it presented."""

    peer: str
    endpoint: str
    presented: str
    reason: str


def _endpoint(address: str) -> str:
    """channelz's ``ipv4:10.0.0.1:7001`` -> ``10.0.0.1:7001``."""
    return address.partition(":")[2] if address.startswith(("ipv4:", "ipv6:")) else address


def _clean(text: str, limit: int = 300) -> str:
    """An untrusted string (from a certificate) as one printable line of at most ``limit`` characters."""
    return printable(text[:limit])


def _presented(cert: x509.Certificate) -> tuple[str, list[str]]:
    """(the SPIFFE ID or a description, the DNS names) of a certificate, printable."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return "a certificate without (readable) subject alternative names", []
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    dns = [_clean(str(d), 100) for d in sans.get_values_for_type(x509.DNSName)]
    if len(uris) == 1:
        return _clean(uris[0]), dns
    if not uris:
        return "a certificate without a SPIFFE ID", dns
    return f"a certificate with {len(uris)} SPIFFE IDs", dns


class EndpointMonitor:
    """Polls channelz for the channels registered with :meth:`watch`; see the module docstring."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        probe: Callable[[str], x509.Certificate] = server_certificate,
        meters: Instruments | None = None,
    ) -> None:
        self._interval = interval
        self._probe = probe
        self._meters = meters
        self._targets: dict[str, MonitoredPeer] = {}
        self._failures: dict[int, str | None] = {}  # subchannel id -> timestamp of its last failure seen
        self._probed: dict[tuple[str, str], float] = {}  # (peer, endpoint) -> when last looked at
        self._reported: dict[tuple[str, str, str], Rejection] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._unavailable = False

    @property
    def rejections(self) -> tuple[Rejection, ...]:
        """Every (endpoint, identity) refused so far, oldest first (at most MAX_REMEMBERED)."""
        return tuple(self._reported.values())

    def watch(self, target: str, peer: MonitoredPeer) -> None:
        """Watch the channels to ``target`` (a gRPC target string) for ``peer``, instead of the peer's
        earlier target if it had another (a dns-mode endpoint list is its target)."""
        for old in [t for t, p in self._targets.items() if p.name == peer.name and t != target]:
            del self._targets[old]
        self._targets[target] = peer

    def start(self) -> None:
        """Start polling on the running loop; idempotent."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            if self._targets:
                self.poll()
            await asyncio.sleep(self._interval)

    def poll(self) -> None:
        """Read channelz once and act on what is new."""
        views = read_subchannels(set(self._targets))
        if views is None:
            if not self._unavailable:
                log.warning("peers: channelz cannot be read in this grpcio: failed peer connections will not "
                            "trigger a re-resolution and refused endpoints are not logged (calls are balanced "
                            "and retried all the same)")
            self._unavailable = True
            return
        seen: set[int] = set()
        for view in views:
            seen.add(view.subchannel_id)
            self._look(view)
        for ident in set(self._failures) - seen:
            del self._failures[ident]

    def _look(self, view: SubchannelView) -> None:
        failed_now = view.state == "TRANSIENT_FAILURE"
        marker = view.failure_at if view.failure_at is not None else ("state" if failed_now else None)
        if marker is None or self._failures.get(view.subchannel_id) == marker:
            return
        self._failures[view.subchannel_id] = marker
        peer = self._targets.get(view.channel_target)
        if peer is None:
            return
        peer.on_failure()
        reason = identity_failure(view.failure)
        if reason is None:
            return
        endpoint = _endpoint(view.address)
        now = time.monotonic()
        last = self._probed.get((peer.name, endpoint))
        if last is not None and now - last < PROBE_INTERVAL:
            return
        self._probed[(peer.name, endpoint)] = now
        task = asyncio.ensure_future(self._check(peer, endpoint, reason, view.failure or ""))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _check(self, peer: MonitoredPeer, endpoint: str, reason: str, failure: str) -> None:
        try:
            cert = await asyncio.to_thread(self._probe, endpoint)
            presented, dns = _presented(cert)
        except (PeerError, OSError, ValueError) as exc:
            presented, dns = f"a certificate that could not be read again ({_clean(str(exc), 200)})", []
        key = (peer.name, endpoint, presented)
        if key in self._reported:
            return
        if len(self._reported) >= MAX_REMEMBERED:
            self._reported.pop(next(iter(self._reported)))
        self._reported[key] = Rejection(peer.name, endpoint, presented, reason)
        (self._meters or instruments()).endpoint_rejected(peer.name, reason)
        expected = str(peer.spiffe_id)
        if reason == "dns_name" and presented == expected:
            what = f"presented {presented} without the DNS name '{peer.tls_name}' its peer is verified by"
        elif reason == "chain":
            what = f"presented {presented} in a certificate that the bundle of '{peer.spiffe_id.trust_domain}' " \
                   "does not verify"
        else:
            what = f"presented {presented}, not {expected}"
        extra = f" (DNS names: {', '.join(dns[:4])})" if dns and reason == "dns_name" else ""
        log.warning(
            "peers: endpoint %s of peer '%s' %s%s: gRPC refused its handshake and sends it no calls. Check which "
            "workload listens there (or what the DNS answer lists). [%s]",
            endpoint, peer.name, what, extra, _clean(failure),
        )

    async def close(self) -> None:
        """Stop polling; idempotent."""
        task, self._task = self._task, None
        for pending in [task, *self._pending]:
            if pending is not None:
                pending.cancel()
        for pending in [task, *self._pending]:
            if pending is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
        self._pending.clear()
