"""Connection bounds of the dev agent: per socket, per caller uid, and under the open-file limit.

Every public socket of the agent is a :class:`~meshnode.devagent.peercred.UidGate`,
which knows the caller's uid before it costs anything but the accepted
socket. :class:`ConnectionLedger` decides there whether the connection
may stay: at most ``max_connections`` at once per socket, at most
``max_connections_per_uid`` per caller uid across all sockets, and never
more than the open-file limit holds (a gated connection costs three
descriptors: the caller's, the gate's upstream one and gRPC's). A refused
connection is closed at once. So a local user who opens a thousand idle
connections holds at most their uid's share; other uids, and the other
sockets, keep getting their identities.

Refusals and permission denials are logged as one summary line per
interval (:class:`~meshnode.logsummary.EventSummary`), never one line per
connection. Runs on the agent's event loop (not thread-safe by itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshnode.fdlimit import connection_budget, current_limit
from meshnode.logsummary import EventSummary

__all__ = ["FDS_PER_CONNECTION", "ConnectionLedger", "ConnectionLimits", "LoopErrors", "Ticket"]

log = logging.getLogger("meshnode.devagent.agent")

#: descriptors one gated connection holds: the caller's socket, the gate's upstream socket, gRPC's end
FDS_PER_CONNECTION = 3
SUMMARY_INTERVAL = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 256  # per socket
    max_connections_per_uid: int = 64  # per caller uid, all sockets together
    handshake_timeout: float = 5.0  # seconds a new connection has to start HTTP/2
    idle_timeout: float = 300.0  # seconds a connection without any call is kept

    def grpc_options(self) -> list[tuple[str, int]]:
        """The options of the agent's (private) gRPC servers that close stalled and idle connections."""
        return [
            ("grpc.server_handshake_timeout_ms", max(1, round(self.handshake_timeout * 1000))),
            ("grpc.max_connection_idle_ms", max(1, round(self.idle_timeout * 1000))),
        ]


@dataclass(frozen=True)
class Ticket:
    """One admitted connection; give it back with :meth:`ConnectionLedger.release`."""

    socket: str
    uid: int


class ConnectionLedger:
    """Counts open gated connections by socket and by uid; admits or refuses new ones."""

    def __init__(self, limits: ConnectionLimits, *, fd_budget: int | None = None) -> None:
        self.limits = limits
        self.total_cap = fd_budget if fd_budget is not None else connection_budget(
            fds_per_connection=FDS_PER_CONNECTION
        )
        self._by_socket: Counter[str] = Counter()
        self._by_uid: Counter[int] = Counter()
        self._total = 0
        self.refused = EventSummary(SUMMARY_INTERVAL)
        self.denied = EventSummary(SUMMARY_INTERVAL)

    def check_budget(self, sockets: int) -> None:
        """Warn when the per-socket limit does not fit the open-file limit for ``sockets`` sockets."""
        wanted = sockets * self.limits.max_connections
        if wanted > self.total_cap:
            log.warning(
                "agent: %d sockets x max_connections %d need about %d open files, more than the open-file "
                "limit (%s) allows: at most %d connections are held in all; raise the limit (ulimit -n, "
                "systemd LimitNOFILE=) or lower max_connections",
                sockets, self.limits.max_connections, wanted * FDS_PER_CONNECTION, current_limit().describe(),
                self.total_cap,
            )

    def admit(self, socket: str, uid: int) -> Ticket | None:
        """A ticket for a new connection from ``uid`` on ``socket``, or None (counted, to be closed)."""
        limit = None
        if self._by_uid[uid] >= self.limits.max_connections_per_uid:
            limit = f"per-uid limit {self.limits.max_connections_per_uid}"
        elif self._by_socket[socket] >= self.limits.max_connections:
            limit = f"per-socket limit {self.limits.max_connections}"
        elif self._total >= self.total_cap:
            limit = f"open-file budget {self.total_cap}"
        if limit is not None:
            self.refused.add(f"uid {uid} on {socket}: {limit}")
            return None
        self._by_uid[uid] += 1
        self._by_socket[socket] += 1
        self._total += 1
        return Ticket(socket, uid)

    def release(self, ticket: Ticket) -> None:
        self._by_uid[ticket.uid] -= 1
        self._by_socket[ticket.socket] -= 1
        self._total -= 1
        if self._by_uid[ticket.uid] <= 0:
            del self._by_uid[ticket.uid]

    def open_connections(self, *, socket: str | None = None, uid: int | None = None) -> int:
        if socket is not None:
            return self._by_socket[socket]
        if uid is not None:
            return self._by_uid[uid]
        return self._total

    def log_summaries(self, *, force: bool = False) -> None:
        refused = self.refused.take(force=force)
        if refused is not None:
            log.warning(
                "agent: refused %d connection%s in the last %.1f s (%s): over the connection limits "
                "(max_connections, max_connections_per_uid in agent.toml)",
                refused.total, "" if refused.total == 1 else "s", refused.seconds, refused.top(),
            )
        denied = self.denied.take(force=force)
        if denied is not None:
            log.info(
                "agent: permission denied to %d connection%s in the last %.1f s (%s): no registration entry "
                "for the caller's uid",
                denied.total, "" if denied.total == 1 else "s", denied.seconds, denied.top(),
            )


class LoopErrors:
    """An event loop exception handler that shows each kind of error in full once, then counts it.

    asyncio retries a failed ``accept()`` (EMFILE) every second and logs a
    traceback each time; here the repeats become one line per interval
    (:meth:`log_summary`, called by the agent's summary task).
    """

    def __init__(self, previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None) -> None:
        self._previous = previous
        self._shown: set[str] = set()
        self.repeated = EventSummary(SUMMARY_INTERVAL)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        kind = f"{context.get('message', 'error')}: {type(exc).__name__ if exc else ''} {exc or ''}".strip()[:200]
        if kind in self._shown or len(self._shown) >= 64:
            self.repeated.add(kind)
            return
        self._shown.add(kind)
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def log_summary(self, *, force: bool = False) -> None:
        repeated = self.repeated.take(force=force)
        if repeated is not None:
            log.error("agent: %d repeated event loop error%s in the last %.1f s (%s)", repeated.total,
                      "" if repeated.total == 1 else "s", repeated.seconds, repeated.top())
