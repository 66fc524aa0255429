"""The node's Prometheus endpoint: ``GET /metrics`` in the Prometheus text format, from prometheus-client.

A :class:`MetricsEndpoint` serves one registry holding a :class:`NodeCollector`
(and prometheus-client's process collector: CPU, memory, open files,
``process_start_time_seconds``). The collector reads meshnode's own tallies
when scraped; nothing here runs per call. Metric names (labels are the
attribute names with ``.`` -> ``_``):

=============================================== ========= =============================================
rpc_server_call_duration_seconds                histogram rpc_system, rpc_service, rpc_method,
                                                          rpc_grpc_status_code, meshnode_peer_spiffe_id
rpc_client_call_duration_seconds                histogram the same; the peer is the server called
meshnode_authz_decisions_total                  counter   meshnode_authz_decision (allow | deny |
                                                          unauthenticated), rpc_service, rpc_method, ...
meshnode_identity_seconds_to_expiry             gauge     meshnode_local_spiffe_id: the served SVID
meshnode_identity_bundle_seconds_to_expiry      gauge     meshnode_bundle_trust_domain: earliest CA expiry
meshnode_identity_rotations_total               counter   SVID rotations taken in
meshnode_identity_source_errors_total, meshnode_identity_updates_refused_total,
meshnode_authz_policy_reload_failures_total, meshnode_server_handshake_failures_total (by error_type)
meshnode_node_info                              gauge     node, spiffe_id (always 1)
=============================================== ========= =============================================

The HTTP server is plain HTTP on the configured address (keep it on
loopback or a private interface: it names callers and methods). It runs on
its own threads: each connection has :data:`READ_TIMEOUT` seconds to send
its request and at most :data:`MAX_CONNECTIONS` are served at once (more are
closed at accept), so a flood of idle connections cannot pile up threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from meshnode.telemetry import attributes as attr
from meshnode.telemetry.instruments import Instruments
from meshnode.telemetry.listen import bind_error, resolve_listen
from meshnode.telemetry.rpcmetrics import BUCKETS, RpcMetrics, SeriesView

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "DecisionCounts", "MetricsEndpoint", "NodeCollector", "label"]

log = logging.getLogger("meshnode.telemetry")

#: Seconds a scraper has to send its request.
READ_TIMEOUT = 10.0
#: Connections served at once; more are closed at accept.
MAX_CONNECTIONS = 16
_RPC_LABELS = ("rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code", "meshnode_peer_spiffe_id")
_LE = [*(f"{b:g}" for b in BUCKETS), "+Inf"]


class DecisionCounts(Protocol):
    """The authorization decision tally (:class:`meshnode.authz.counting.DecisionCounter`)."""

    def counts(self) -> list[tuple[Mapping[str, AttributeValue], int]]: ...


def label(name: str) -> str:
    """An attribute name as a Prometheus name: ``rpc.grpc.status_code`` -> ``rpc_grpc_status_code``."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)


def _value(value: AttributeValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class NodeCollector:
    """Renders one node's meshnode metrics as Prometheus families, when scraped (thread-safe reads)."""

    def __init__(
        self,
        node_name: str,
        spiffe_id: Callable[[], str],
        *,
        instruments: Instruments,
        rpc_metrics: RpcMetrics | None = None,
        decisions: DecisionCounts | None = None,
    ) -> None:
        self._node = node_name
        self._spiffe_id = spiffe_id
        self._instruments = instruments
        self._rpc = rpc_metrics
        self._decisions = decisions

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("meshnode_node_info", "The node this endpoint belongs to",
                                 labels=["node", "spiffe_id"])
        info.add_metric([self._node, self._spiffe_id()], 1)
        yield info
        if self._rpc is not None:
            views = self._rpc.views()
            for side in ("server", "client"):
                yield _histogram(side, [v for v in views if v.side == side])
        if self._decisions is not None:
            yield _counter(label(attr.AUTHZ_DECISIONS), "Authorization decisions, by decision and method",
                           self._decisions.counts())
        yield from self._identity()

    def _identity(self) -> Iterable[Metric]:
        expiry = GaugeMetricFamily(
            label(attr.IDENTITY_SECONDS_TO_EXPIRY), "Seconds until the served X.509-SVID expires",
            labels=[label(attr.LOCAL_SPIFFE_ID)],
        )
        for labels, left in _soonest(((local,), left) for local, left in self._instruments.expiries()):
            expiry.add_metric(list(labels), left)
        yield expiry
        bundles = GaugeMetricFamily(
            label(attr.IDENTITY_BUNDLE_SECONDS_TO_EXPIRY),
            "Seconds until the earliest CA certificate of a trust domain's bundle expires",
            labels=[label(attr.LOCAL_SPIFFE_ID), label(attr.BUNDLE_TRUST_DOMAIN)],
        )
        found = (((local, td), left) for local, td, left in self._instruments.bundle_expiries())
        for labels, left in _soonest(found):
            bundles.add_metric(list(labels), left)
        yield bundles
        counts = self._instruments.counts()
        for name, doc in (
            (attr.IDENTITY_ROTATIONS, "X.509-SVID rotations taken in"),
            (attr.IDENTITY_SOURCE_ERRORS, "Errors reported by the identity source"),
            (attr.IDENTITY_UPDATES_REFUSED, "Identity updates refused by the node's identity rules"),
            (attr.AUTHZ_POLICY_RELOAD_FAILURES, "Policy reloads refused (the previous policy stays in force)"),
            (attr.SERVER_HANDSHAKE_FAILURES, "TLS handshakes the node's server failed"),
        ):
            yield _counter(label(name), doc, [(attrs, n) for metric, attrs, n in counts if metric == name])


def _soonest(rows: Iterable[tuple[tuple[str, ...], float]]) -> list[tuple[tuple[str, ...], float]]:
    """One value per label set, the smallest (two watches of one identity must not repeat a series)."""
    out: dict[tuple[str, ...], float] = {}
    for labels, left in rows:
        out[labels] = min(left, out.get(labels, left))
    return sorted(out.items())


def _counter(name: str, doc: str, counts: Sequence[tuple[Mapping[str, AttributeValue], int]]) -> Metric:
    keys = sorted({key for attributes, _ in counts for key in attributes})
    merged: dict[tuple[str, ...], int] = {}
    for attributes, n in counts:
        row = tuple(_value(attributes[k]) if k in attributes else "" for k in keys)
        merged[row] = merged.get(row, 0) + n
    family = CounterMetricFamily(name, doc, labels=[label(k) for k in keys])
    for row, n in sorted(merged.items()):
        family.add_metric(list(row), n)
    if not keys and not merged:
        family.add_metric([], 0)  # a counter without labels exists from the start (rate() needs it)
    return family


def _histogram(side: str, views: Sequence[SeriesView]) -> Metric:
    family = HistogramMetricFamily(
        f"rpc_{side}_call_duration",
        f"Duration of {'inbound' if side == 'server' else 'outbound'} RPCs, by method, status code and peer SPIFFE ID",
        labels=list(_RPC_LABELS), unit="seconds",
    )
    for v in sorted(views, key=lambda v: (v.service, v.method, v.code, v.peer)):
        buckets = [(le, float(n)) for le, n in zip(_LE, accumulate(v.counts), strict=True)]
        family.add_metric(["grpc", v.service, v.method, str(v.code), v.peer], buckets, v.total)
    return family


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # socket timeout while reading the request: idle connections end

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
        """Scrapes are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: close at once rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _server_class(host: str, port: int) -> type[_Server]:
    family, _ = resolve_listen(host, port)

    class Server(_Server):
        address_family = family

    return Server


class MetricsEndpoint:
    """``GET /metrics`` on ``host:port`` (port 0: any free one), from ``collectors``; :meth:`close` stops it.

    :meth:`start` binds at once: an address in use raises ServeError (exit 4),
    one that is not this machine's or does not resolve raises ConfigError (exit 2).
    """

    def __init__(self, host: str, port: int, collectors: Iterable[Any], *, process: bool = True) -> None:
        self.host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._port = port
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            self.registry.register(collector)
        if process:
            ProcessCollector(registry=self.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsEndpoint:
        if self._server is not None:
            return self
        where = f"{self.host}:{self._port}"
        server_class = _server_class(self.host, self._port)
        try:
            self._server = make_server(
                self.host, self._port, make_wsgi_app(self.registry), server_class, handler_class=_Handler
            )
        except OSError as exc:
            raise bind_error(where, exc) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshnode-metrics", kwargs={"poll_interval": 0.5}, daemon=True
        )
        self._thread.start()
        log.debug("metrics: serving %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
