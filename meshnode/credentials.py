"""TLS credentials from a live identity.

Server side: ``grpc.dynamic_ssl_server_credentials`` with client
certificates required. gRPC calls the fetcher once per new TLS handshake on
a core thread, so it must be O(1): the certificate configuration is built
when a snapshot is published (on the source's thread) and the fetcher only
compares one reference. Roots are the bundles of every trust domain the
node accepts.

Client side: one ``ssl_channel_credentials`` per (SVID, peer bundle) pair,
with roots limited to the peer's own trust domain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import grpc

from meshnode.errors import InvalidIdentityError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource

__all__ = ["ServerCredentials", "channel_credentials"]

log = logging.getLogger("meshnode.credentials")


def _server_config(snapshot: IdentitySnapshot, trust_domains: Iterable[str]) -> grpc.ServerCertificateConfiguration:
    roots = snapshot.roots_pem(sorted(trust_domains))
    if not roots:
        raise InvalidIdentityError(
            reason=f"no trust bundle for the accepted trust domains {sorted(trust_domains)}; "
            "the node cannot verify any caller", component="credentials"
        )
    return grpc.ssl_server_certificate_configuration(
        [(snapshot.key_pem, snapshot.chain_pem)], root_certificates=roots
    )


class ServerCredentials:
    """Server credentials that follow an identity source, handshake by handshake.

    :attr:`served` is the identity new handshakes present: what health must
    be computed from. A snapshot this class cannot use (no roots for the
    accepted trust domains) leaves it unchanged. :meth:`subscribe` reports
    every change of :attr:`served` (on the source's thread).
    """

    def __init__(self, source: IdentitySource, accepted_trust_domains: Iterable[str]) -> None:
        self._trust_domains = frozenset(accepted_trust_domains)
        snapshot = source.current()
        self._pending: tuple[IdentitySnapshot, grpc.ServerCertificateConfiguration] = (
            snapshot,
            _server_config(snapshot, self._trust_domains),
        )
        self._served_generation = snapshot.generation
        self._lock = threading.Lock()
        self._listeners: list[Callable[[IdentitySnapshot], None]] = []
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._pending[1], self._fetch, require_client_authentication=True
        )
        self._unsubscribe: Callable[[], None] = source.subscribe(self._on_snapshot)

    @property
    def generation(self) -> int:
        """The identity generation new handshakes present."""
        return self._pending[0].generation

    @property
    def served(self) -> IdentitySnapshot:
        """The identity (certificate, chain, roots) new handshakes present."""
        return self._pending[0]

    def subscribe(self, callback: Callable[[IdentitySnapshot], None]) -> Callable[[], None]:
        """Call ``callback(served)`` whenever :attr:`served` changes; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def _on_snapshot(self, snapshot: IdentitySnapshot) -> None:
        try:
            config = _server_config(snapshot, self._trust_domains)
        except InvalidIdentityError as exc:
            log.warning(
                "credentials: keeping the server certificate serial=%s (not after %s): %s",
                self._pending[0].serial, self._pending[0].not_after.isoformat(), exc,
            )
            return
        self._pending = (snapshot, config)
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            callback(snapshot)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        snapshot, config = self._pending
        if snapshot.generation == self._served_generation:
            return None
        with self._lock:
            self._served_generation = snapshot.generation
        return config

    def close(self) -> None:
        self._unsubscribe()
        with self._lock:
            self._listeners.clear()


def channel_credentials(snapshot: IdentitySnapshot, peer_trust_domain: str) -> grpc.ChannelCredentials:
    """mTLS channel credentials: our SVID, roots = the peer trust domain's bundle only."""
    roots = snapshot.bundle_pem(peer_trust_domain)
    if not roots:
        raise InvalidIdentityError(
            reason=f"no trust bundle for the peer's trust domain '{peer_trust_domain}'; "
            "federate with it (SPIRE federation, or [identity] federated_bundles_dir) before calling it",
            component="credentials"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=snapshot.key_pem, certificate_chain=snapshot.chain_pem
    )
