"""meshnode's metric instruments, through the OpenTelemetry metrics API only.

Instruments are made on first use from ``get_meter("meshnode")``. Until an
application installs an SDK ``MeterProvider`` they are the API's no-ops
(the API's proxies bind them to the real provider once one is set), so a
library user who turns nothing on pays nothing. The names are listed in
:mod:`meshnode.telemetry.attributes`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

from opentelemetry import metrics
from opentelemetry.util.types import AttributeValue

from meshnode.errors import IdentityUnavailableError
from meshnode.telemetry import attributes as attr
from meshnode.telemetry.events import SnapshotView

__all__ = ["ExpiryWatch", "Instruments", "bundle_not_after", "instruments", "split_method"]

#: Returns the current snapshot, None or raises IdentityUnavailableError when there is none.
SnapshotGetter = Callable[[], SnapshotView | None]

_ERROR_TYPE = "error.type"  # OpenTelemetry's general semantic convention


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``, as the gRPC instrumentation names them."""
    service, sep, method = full_method.lstrip("/").partition("/")
    return (service, method) if sep and service and method else ("", full_method)


class ExpiryWatch:
    """One snapshot getter observed by the seconds-to-expiry gauge; :meth:`close` stops it."""

    def __init__(self, owner: Instruments, getter: SnapshotGetter) -> None:
        self._owner = owner
        self.getter = getter

    def close(self) -> None:
        """Stop observing; idempotent."""
        self._owner._unwatch(self)

    def __enter__(self) -> ExpiryWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Instruments:
    """The meshnode instruments on one meter provider (the global one by default)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._meter = metrics.get_meter("meshnode", meter_provider=meter_provider)
        self._rotations = self._meter.create_counter(
            attr.IDENTITY_ROTATIONS, unit="{rotation}", description="X.509-SVID rotations taken in"
        )
        self._source_errors = self._meter.create_counter(
            attr.IDENTITY_SOURCE_ERRORS, unit="{error}", description="Errors reported by the identity source"
        )
        self._updates_refused = self._meter.create_counter(
            attr.IDENTITY_UPDATES_REFUSED,
            unit="{update}",
            description="Identity updates refused by the node's identity rules (the last good identity stays)",
        )
        self._reload_failures = self._meter.create_counter(
            attr.AUTHZ_POLICY_RELOAD_FAILURES,
            unit="{failure}",
            description="Policy reloads refused (the previous policy stays in force)",
        )
        self._handshake_failures = self._meter.create_counter(
            attr.SERVER_HANDSHAKE_FAILURES,
            unit="{handshake}",
            description="TLS handshakes the node's server failed (a caller without TLS or a trusted certificate)",
        )
        self._endpoints_rejected = self._meter.create_counter(
            attr.PEER_ENDPOINT_REJECTED,
            unit="{endpoint}",
            description="Peer endpoints whose identity gRPC refused (once per endpoint and presented identity)",
        )
        self._lock = threading.Lock()
        self._watches: list[ExpiryWatch] = []
        self._gauge_made = False
        # the same counts kept here too, for collectors other than OpenTelemetry's (Prometheus)
        self._tallies: dict[tuple[str, frozenset[tuple[str, AttributeValue]]], int] = {}

    def _count(self, counter: metrics.Counter, name: str, n: int, attributes: Mapping[str, AttributeValue]) -> None:
        counter.add(n, attributes)
        key = (name, frozenset(attributes.items()))
        with self._lock:
            self._tallies[key] = self._tallies.get(key, 0) + n

    def rotation(self, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Count one SVID rotation."""
        self._count(self._rotations, attr.IDENTITY_ROTATIONS, 1, attributes or {})

    def source_error(self, error_type: str) -> None:
        """Count one identity source error; ``error_type`` is low-cardinality (a class name)."""
        self._count(self._source_errors, attr.IDENTITY_SOURCE_ERRORS, 1, {_ERROR_TYPE: error_type})

    def update_refused(self, error_type: str) -> None:
        """Count one refused identity update; ``error_type`` is low-cardinality (``trust_domain``, ...)."""
        self._count(self._updates_refused, attr.IDENTITY_UPDATES_REFUSED, 1, {_ERROR_TYPE: error_type})

    def policy_reload_failure(self, error_type: str) -> None:
        """Count one refused policy reload."""
        self._count(self._reload_failures, attr.AUTHZ_POLICY_RELOAD_FAILURES, 1, {_ERROR_TYPE: error_type})

    def handshake_failures(self, reason: str, count: int = 1) -> None:
        """Count failed server TLS handshakes; ``reason`` is the OpenSSL reason code (low-cardinality)."""
        self._count(self._handshake_failures, attr.SERVER_HANDSHAKE_FAILURES, count, {_ERROR_TYPE: reason})

    def counts(self) -> list[tuple[str, dict[str, AttributeValue], int]]:
        """Every counter's value per attribute set: (metric name, attributes, count)."""
        with self._lock:
            return [(name, dict(key), value) for (name, key), value in self._tallies.items()]

    def expiries(self) -> list[tuple[str, float]]:
        """(local SPIFFE ID, seconds to expiry) of every watched identity."""
        return [(str(s.spiffe_id), s.seconds_left()) for s in self._snapshots()]

    def bundle_expiries(self) -> list[tuple[str, str, float]]:
        """(local SPIFFE ID, trust domain, seconds until its earliest CA expires) of every watched identity."""
        now = dt.datetime.now(dt.UTC)
        return [
            (str(s.spiffe_id), td, (not_after - now).total_seconds())
            for s in self._snapshots()
            for td, not_after in sorted(bundle_not_after(s).items())
        ]

    def endpoint_rejected(self, peer_name: str, reason: str) -> None:
        """Count one peer endpoint refused for its identity; ``reason``: spiffe_id, dns_name or chain."""
        self._endpoints_rejected.add(1, {attr.PEER_NAME: peer_name, _ERROR_TYPE: reason})

    def watch_expiry(self, getter: SnapshotGetter) -> ExpiryWatch:
        """Report ``getter()``'s seconds to expiry on every collection until the watch is closed.

        ``getter`` runs on the metric reader's thread: it must be cheap and must
        not block (``source.current`` of an identity source is). No identity
        (None or IdentityUnavailableError) means no observation.
        """
        watch = ExpiryWatch(self, getter)
        with self._lock:
            self._watches.append(watch)
            if not self._gauge_made:
                self._meter.create_observable_gauge(
                    attr.IDENTITY_SECONDS_TO_EXPIRY,
                    callbacks=[self._observe_expiry],
                    unit="s",
                    description="Seconds until the node's X.509-SVID expires",
                )
                self._meter.create_observable_gauge(
                    attr.IDENTITY_BUNDLE_SECONDS_TO_EXPIRY,
                    callbacks=[self._observe_bundle_expiry],
                    unit="s",
                    description="Seconds until the earliest CA certificate of a trust domain's bundle expires",
                )
                self._gauge_made = True
        return watch

    def _unwatch(self, watch: ExpiryWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def _snapshots(self) -> list[SnapshotView]:
        with self._lock:
            watches = list(self._watches)
        out = []
        for watch in watches:
            try:
                snapshot = watch.getter()
            except IdentityUnavailableError:
                continue
            if snapshot is not None:
                out.append(snapshot)
        return out

    def _observe_expiry(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(left, {attr.LOCAL_SPIFFE_ID: local}) for local, left in self.expiries()]

    def _observe_bundle_expiry(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(left, {attr.LOCAL_SPIFFE_ID: local, attr.BUNDLE_TRUST_DOMAIN: td})
            for local, td, left in self.bundle_expiries()
        ]


def bundle_not_after(snapshot: SnapshotView) -> dict[str, dt.datetime]:
    """Per trust domain of ``snapshot``'s bundles, when its earliest CA certificate expires."""
    bundles = snapshot.bundles
    if not isinstance(bundles, Mapping):
        return {}
    out = {}
    for td, certs in bundles.items():
        times = [c.not_valid_after_utc for c in certs]
        if times:
            out[str(td)] = min(times)
    return out


_default: Instruments | None = None
_default_lock = threading.Lock()


def instruments() -> Instruments:
    """The process-wide instruments on the global meter provider, made on first call."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Instruments()
        return _default
