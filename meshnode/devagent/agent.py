"""The dev Workload API agent: a dev CA behind SPIFFE Workload API sockets.

:class:`DevAgent` serves the entries of an :class:`~meshnode.devagent.config.AgentConfig`
on one unix socket per entry name, ``<socket_dir>/<name>.sock`` (the socket
stands in for workload attestation), so py-spiffe, go-spiffe and
spiffe-helper use it the way they use a SPIRE agent. Entries that share a
name are served together on that socket, one X509-SVID each, with their
hints. One grpc.aio server per socket, all on one loop.

Rotation works like SPIRE's: each X509-SVID is re-issued at half its
lifetime and pushed on every open stream; :meth:`DevAgent.rotate_ca` puts the
next CA in the bundle before it signs anything, and drops the old CA once
the SVIDs it signed have expired.

Sockets are handled by :class:`~meshnode.devagent.sockets.AgentSockets`
(0777 like SPIRE's; an entry's ``uid`` restricts who gets its identity), with
connection bounds per socket and per caller uid
(:mod:`meshnode.devagent.limits`); refusals and event loop errors are
logged as one summary line per interval. This is a development agent: its CA
key lives in memory or in ``state_dir``.

:class:`DevAgentThread` runs an agent on its own loop in a thread, for sync code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography import x509

from meshnode.devagent.ca import DevCA, IssuedSVID
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.devagent.limits import ConnectionLimits, LoopErrors
from meshnode.devagent.server import AgentState, ServedSVID, StateFeed, WorkloadAPIServicer
from meshnode.devagent.sockets import AgentSockets, remove_stale_private_dirs
from meshnode.errors import ClosedError, ConfigError, ServeError
from meshnode.identity.snapshot import utcnow

__all__ = ["DevAgent", "DevAgentThread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _State(enum.Enum):
    NEW = "not started"
    STARTING = "starting"
    SERVING = "serving"
    CLOSED = "closed"


class DevAgent:
    """The dev Workload API agent; ``async with DevAgent(config) as agent: ...``."""

    def __init__(self, config: AgentConfig, *, ca: DevCA | None = None) -> None:
        self.config = config
        self.ca = ca if ca is not None else DevCA(config.trust_domain, state_dir=config.state_dir)
        if self.ca.trust_domain != config.trust_domain:
            raise ConfigError(f"agent: the CA is for '{self.ca.trust_domain}', the config for '{config.trust_domain}'")
        self._ttl = dt.timedelta(seconds=config.svid_ttl)
        self._svids: dict[EntryConfig, IssuedSVID] = {}
        self._renew_at: dict[EntryConfig, dt.datetime] = {}
        self._generation = 0
        self._feed: StateFeed | None = None
        self._sockets = AgentSockets(config.socket_dir, ConnectionLimits(
            max_connections=config.max_connections, max_connections_per_uid=config.max_connections_per_uid,
            handshake_timeout=config.handshake_timeout, idle_timeout=config.idle_timeout,
        ))
        self._loop_errors: LoopErrors | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ca_lock = asyncio.Lock()
        self._state = _State.NEW

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Issue every entry's SVID and bind every socket; on failure nothing stays bound."""
        if self._state is not _State.NEW:
            raise ClosedError(f"agent: start() on an agent that is {self._state.value}; make a new DevAgent")
        self._state = _State.STARTING
        self._install_loop_errors()
        for stale in remove_stale_private_dirs():
            log.info("agent: removed %s, left behind by an agent that was killed", stale)
        try:
            sockets = self.config.sockets
            self._sockets.ledger.check_budget(len(sockets))
            self._sockets.claim([self.config.socket_path(name) for name in sockets])
            self._issue(self.config.entries)
            feed = self._feed = StateFeed(self._next_state())
            for name, entries in sockets.items():
                servicer = WorkloadAPIServicer(feed, entries, self.ca, self._ttl)
                await self._sockets.serve(self.config.socket_path(name), servicer, entries[0].uid)
        except BaseException:
            await self.close()
            raise
        self._spawn(self._renew_loop())
        self._spawn(self._summary_loop())
        self._state = _State.SERVING
        log.info("agent: serving trust domain %s: %d entries on %d sockets in %s", self.config.trust_domain,
                 len(self.config.entries), len(self.config.sockets), self.config.socket_dir)

    async def close(self) -> None:
        """Stop serving and remove this agent's sockets; idempotent."""
        if self._state is _State.CLOSED:
            return
        was_serving, self._state = self._state is _State.SERVING, _State.CLOSED
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._feed is not None:
            self._feed.close()  # open streams end with UNAVAILABLE: clients keep their SVID and retry
        await self._sockets.close()
        self._log_summaries(force=True)
        self._remove_loop_errors()
        if was_serving:
            log.info("agent: stopped; sockets removed from %s", self.config.socket_dir)

    async def __aenter__(self) -> DevAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def socket_path(self, name: str) -> Path:
        """The public socket of the entry called ``name``."""
        return self.config.socket_path(self.config.entry(name).name)

    def svid(self, name: str) -> IssuedSVID:
        """The default X509-SVID (the first entry's) the socket ``name`` hands out now."""
        self._require_serving()
        return self._svids[self.config.entry(name)]

    def svids(self, name: str) -> tuple[IssuedSVID, ...]:
        """Every X509-SVID the socket ``name`` hands out now, in order."""
        self._require_serving()
        return tuple(self._svids[entry] for entry in self.config.entries_of(name))

    # -- rotation -----------------------------------------------------------

    async def rotate_svids(self) -> None:
        """Re-issue every entry's SVID now and push it on every open stream."""
        self._require_serving()
        self._issue(self.config.entries)
        self._publish()

    async def rotate_ca(self, *, activate_after: float = 0.0, retire_after: float | None = None) -> None:
        """Rotate the CA with overlap, like SPIRE.

        The next CA enters the bundle (pushed) before it signs anything; after
        ``activate_after`` seconds it becomes the signer and every SVID is
        re-issued (pushed). The old CA stays in the bundle for ``retire_after``
        seconds; by default until the last SVID it signed expires.
        """
        self._require_serving()
        async with self._ca_lock:
            old = self.ca.ca_certificate
            new = self.ca.prepare_rotation()
            log.info("agent: prepared CA serial %x (not after %s): in the bundle, signing nothing yet",
                     new.serial_number, new.not_valid_after_utc.isoformat())
            self._publish()
            if activate_after > 0:
                await asyncio.sleep(activate_after)
            old_svids_expire = max(svid.chain[0].not_valid_after_utc for svid in self._svids.values())
            self.ca.activate_next()
            log.info("agent: CA serial %x now signs; CA serial %x stays in the bundle",
                     new.serial_number, old.serial_number)
            self._issue(self.config.entries)
            self._publish()
        delay = retire_after if retire_after is not None else (old_svids_expire - utcnow()).total_seconds()
        self._spawn(self._retire_later(old, max(delay, 0.0)))

    async def _retire_later(self, ca: x509.Certificate, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.ca.retire(ca):
            log.info("agent: retired CA serial %x from the bundle", ca.serial_number)
            self._publish()

    async def _renew_loop(self) -> None:
        """Re-issue each SVID at half its lifetime."""
        while True:
            now = utcnow()
            due = [entry for entry in self.config.entries if self._renew_at[entry] <= now]
            if due:
                try:
                    self._issue(due)
                except Exception as exc:  # keep serving the current SVIDs; they stay valid a while
                    log.error("agent: re-issuing SVIDs failed: %s; retrying in 1 s", exc)
                    await asyncio.sleep(1.0)
                    continue
                self._publish()
            wake = min(self._renew_at.values())  # rotate_svids only moves these later: waking early is harmless
            await asyncio.sleep(max((wake - utcnow()).total_seconds(), 0.01))

    # -- internals ----------------------------------------------------------

    def _install_loop_errors(self) -> None:
        """Rate-limit the loop's error reports (asyncio logs a failed accept() every second), unless the
        application installed its own handler."""
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            self._loop_errors = LoopErrors()
            loop.set_exception_handler(self._loop_errors)

    def _remove_loop_errors(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop_errors is not None and loop.get_exception_handler() is self._loop_errors:
            loop.set_exception_handler(None)
        self._loop_errors = None

    def _log_summaries(self, *, force: bool = False) -> None:
        self._sockets.ledger.log_summaries(force=force)
        if self._loop_errors is not None:
            self._loop_errors.log_summary(force=force)

    async def _summary_loop(self) -> None:
        """Log refused/denied connections and repeated loop errors as their summaries fall due."""
        while True:
            await asyncio.sleep(1.0)
            self._log_summaries()

    def _require_serving(self) -> None:
        if self._state is not _State.SERVING:
            raise ClosedError(f"agent: the agent is {self._state.value}, not serving")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _issue(self, entries: Iterable[EntryConfig]) -> None:
        for entry in entries:
            issued_at = utcnow()
            svid = self.ca.issue(entry.spiffe_id, self._ttl, dns_names=entry.dns_names, map_dns=entry.map_dns)
            not_after = svid.chain[0].not_valid_after_utc
            self._svids[entry] = svid
            self._renew_at[entry] = issued_at + (not_after - issued_at) / 2
            log.info("agent: issued X509-SVID %s for entry %s: serial %x, not after %s",
                     entry.spiffe_id, entry.name, svid.chain[0].serial_number, not_after.isoformat())

    def _next_state(self) -> AgentState:
        self._generation += 1
        return AgentState(
            generation=self._generation,
            trust_domain=self.config.trust_domain,
            svids=MappingProxyType({
                name: tuple(ServedSVID(self._svids[entry], entry.hint) for entry in entries)
                for name, entries in self.config.sockets.items()
            }),
            bundle=self.ca.bundle,
            federated=self.config.federation,
            jwks=self.ca.jwks(),
        )

    def _publish(self) -> None:
        if self._feed is not None:
            self._feed.publish(self._next_state())


class DevAgentThread:
    """A :class:`DevAgent` on its own event loop in a daemon thread, for sync code and tests.

    ``with DevAgentThread(config) as agent:`` returns once every socket is
    bound (or raises what :meth:`DevAgent.start` raised); leaving the block
    stops the agent and removes its sockets.
    """

    def __init__(self, config: AgentConfig, *, ca: DevCA | None = None, timeout: float = 30.0) -> None:
        self.agent = DevAgent(config, ca=ca)
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> DevAgentThread:
        if self._thread is not None or self._closed:
            raise ClosedError("agent: DevAgentThread.start() may be called once, before close()")
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="meshnode-agent", daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout):
            self.close()
            raise ServeError(reason=f"did not start within {self._timeout} s", component="agent")
        if self._error is not None:
            self._thread.join()
            self._closed = True
            raise self._error
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.agent.start()
        except BaseException as exc:
            self._error = exc
            return
        finally:
            self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.agent.close()

    def close(self) -> None:
        """Stop the agent, remove its sockets and end the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            stop = self._stop
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(self._timeout)

    def __enter__(self) -> DevAgentThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T], extra_time: float = 0.0) -> T:
        if self._closed or self._loop is None or not self._ready.is_set():
            coro.close()
            raise ClosedError("agent: the agent thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout + extra_time)

    def socket_path(self, name: str) -> Path:
        return self.agent.socket_path(name)

    def socket_address(self, name: str) -> str:
        """``unix:///...`` address of an entry's socket, as SPIFFE_ENDPOINT_SOCKET wants it."""
        return f"unix://{self.socket_path(name)}"

    def svid(self, name: str) -> IssuedSVID:
        return self.agent.svid(name)

    def svids(self, name: str) -> tuple[IssuedSVID, ...]:
        return self.agent.svids(name)

    def rotate_svids(self) -> None:
        self._call(self.agent.rotate_svids())

    def rotate_ca(self, *, activate_after: float = 0.0, retire_after: float | None = None) -> None:
        self._call(self.agent.rotate_ca(activate_after=activate_after, retire_after=retire_after), activate_after)
