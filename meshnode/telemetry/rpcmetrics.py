"""RPC duration histograms by method, status code and peer identity, recorded on meshnode's own call path.

What is recorded (OpenTelemetry RPC semantic conventions, plus the peer):

* ``rpc.server.call.duration`` (seconds): every call a node's server takes,
  from the moment it reaches the handler pipeline (before authorization)
  to the end of the handler; refused calls too, with their status code;
* ``rpc.client.call.duration`` (seconds): every call through a peer
  channel, from the stub call to the response (or the end of the stream);

each with ``rpc.system`` (``grpc``), ``rpc.service``, ``rpc.method``,
``rpc.grpc.status_code`` (the code's number) and ``meshnode.peer.spiffe_id``
(server: the caller's verified ID, ``unauthenticated`` when it had none;
client: the ID the server must present).

Cardinality is bounded: at most ``max_peer_ids`` distinct peer IDs per
:class:`RpcMetrics` (``[telemetry] max_peer_ids``), later ones are recorded
as ``other``; at most :data:`MAX_METHODS` distinct methods (a catch-all
generic handler may see any path a caller makes up), later ones as
``other``/``other``.

Why not an OpenTelemetry SDK histogram: its ``record()`` costs about 8 us
here (attribute hashing, aggregation look-up, locks), 2-3% of a whole call
on its own. A :class:`Series` is resolved once per (method, peer) - on the
server when the authorizer makes its (cached) verdict, on the client when a
stub's multicallable is made - and a call then adds one duration: a bisect
and two increments under an uncontended lock, under a microsecond.
Collectors (:mod:`meshnode.telemetry.prometheus`) copy the counts.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from meshnode.config.telemetry import DEFAULT_MAX_PEER_IDS
from meshnode.telemetry.instruments import split_method

__all__ = [
    "BUCKETS",
    "CLIENT_DURATION",
    "MAX_METHODS",
    "OTHER",
    "SERVER_DURATION",
    "UNAUTHENTICATED",
    "CallSeries",
    "RpcMetrics",
    "Series",
    "SeriesView",
]

Side = Literal["server", "client"]

SERVER_DURATION = "rpc.server.call.duration"
CLIENT_DURATION = "rpc.client.call.duration"

#: Upper bounds (seconds) of the histogram buckets: OpenTelemetry's recommended RPC boundaries
#: (5 ms - 10 s) with finer ones below them, where calls inside a data centre are.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
#: The label of peer IDs (or methods) past the cap.
OTHER = "other"
#: The peer label of calls that came without a usable SPIFFE identity.
UNAUTHENTICATED = "unauthenticated"
#: Distinct (service, method) pairs kept apart per RpcMetrics.
MAX_METHODS = 1000
_CODES = 17  # grpc.StatusCode values 0..16


class CallSeries(Protocol):
    """Where one call's outcome goes (a :class:`Series`): the seam the call paths depend on."""

    def record(self, code: int, seconds: float) -> None: ...


class _Cell:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above the largest bound (+Inf)
        self.total = 0.0


@dataclass(frozen=True)
class SeriesView:
    """A copy of one series' counts for one status code, for a collector."""

    side: Side
    service: str
    method: str
    peer: str
    code: int
    counts: tuple[int, ...]  # per bucket (not cumulative), len(BUCKETS) + 1
    total: float  # sum of the durations

    @property
    def count(self) -> int:
        return sum(self.counts)


class Series:
    """The durations of one (side, service, method, peer), per status code."""

    __slots__ = ("_cells", "_lock", "method", "peer", "service", "side")

    def __init__(self, side: Side, service: str, method: str, peer: str, lock: threading.Lock) -> None:
        self.side = side
        self.service = service
        self.method = method
        self.peer = peer
        self._lock = lock
        self._cells: list[_Cell | None] = [None] * _CODES

    def record(self, code: int, seconds: float) -> None:
        """Add one call that ended with status ``code`` (a number, 0 = OK) after ``seconds``."""
        if not 0 <= code < _CODES:
            code = 2  # UNKNOWN: gRPC has no other codes
        with self._lock:
            cell = self._cells[code]
            if cell is None:
                cell = self._cells[code] = _Cell()
            cell.counts[bisect_left(BUCKETS, seconds)] += 1
            cell.total += seconds

    def views(self) -> Iterator[SeriesView]:
        with self._lock:
            copies = [(code, tuple(c.counts), c.total) for code, c in enumerate(self._cells) if c is not None]
        for code, counts, total in copies:
            yield SeriesView(self.side, self.service, self.method, self.peer, code, counts, total)


class RpcMetrics:
    """Every series of one node (server and client side), with its cardinality caps; thread-safe."""

    def __init__(self, max_peer_ids: int = DEFAULT_MAX_PEER_IDS) -> None:
        if max_peer_ids < 1:
            raise ValueError(f"max_peer_ids must be at least 1, not {max_peer_ids}")
        self.max_peer_ids = max_peer_ids
        self._lock = threading.Lock()  # the series table
        self._record_lock = threading.Lock()  # counts (shared: uncontended on one event loop)
        self._series: dict[tuple[Side, str, str, str], Series] = {}
        self._peers: set[str] = set()
        self._methods: set[tuple[str, str]] = set()

    def series(self, side: Side, full_method: str, peer: str | None) -> Series:
        """The series of ``full_method`` (``/pkg.Service/Method``) with ``peer`` (None: unauthenticated)."""
        service, method = split_method(full_method)
        label = UNAUTHENTICATED if peer is None else peer
        with self._lock:
            if label != UNAUTHENTICATED and label not in self._peers:
                if len(self._peers) < self.max_peer_ids:
                    self._peers.add(label)
                else:
                    label = OTHER
            if (service, method) not in self._methods:
                if len(self._methods) < MAX_METHODS:
                    self._methods.add((service, method))
                else:
                    service, method = OTHER, OTHER
            key = (side, service, method, label)
            found = self._series.get(key)
            if found is None:
                found = self._series[key] = Series(side, service, method, label, self._record_lock)
            return found

    def views(self) -> list[SeriesView]:
        """A copy of every recorded series and status code."""
        with self._lock:
            series = list(self._series.values())
        return [view for s in series for view in s.views()]
