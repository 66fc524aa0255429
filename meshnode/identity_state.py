"""Tracks the validity of the certificate the node serves, drives health, and
reports identity telemetry.

Health is computed from what is actually in use, never from the last
snapshot a source announced: the certificate the server credentials hand to
new handshakes (``served``) and the identity the node's peer channels use
(the source's current snapshot, which a :class:`~meshnode.identity.guard.GuardedSource`
keeps at the last good one). Health is SERVING only while both are within
their validity window and hold a bundle of their own trust domain. It turns
NOT_SERVING when either expires (or is not yet valid), also when the source
has a newer snapshot that could not be taken, and back to SERVING when a
usable one is in place. A warning is logged once the served SVID is past 75%
of its lifetime without renewal (SPIRE renews at 50%). The lifetime counts
from when the SVID was issued, not from its not-before: issuers backdate
not-before (the dev CA by 30 s), and with a short TTL 75% of the backdated
lifetime falls before the issuer's half-life renewal, which made the warning
fire on every rotation of an SVID renewed on time. The issue time is taken
as the SVID's arrival here, but at most :data:`MAX_BACKDATE` after
not-before, so an SVID that arrives already old (a node started late in its
life) is still warned about.

The clock is injectable (``clock``) and :meth:`IdentityState.recheck` wakes
the watcher at once, so tests can move time instead of waiting for it;
:attr:`IdentityState.next_check` says when the next re-check is due.

Telemetry (OpenTelemetry API only, so a no-op until the application turns
it on): every new SVID counts in ``meshnode.identity.rotations`` and is an
``identity.rotated`` event; a bundle-only change is ``identity.bundle_updated``;
expiry without renewal is ``identity.lost`` and the next SVID
``identity.recovered``; ``meshnode.identity.seconds_to_expiry`` is observed
from the served certificate. Events carry the SVID serial and not-after,
never key material.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from meshnode.identity.guard import GuardedSource
from meshnode.identity.snapshot import IdentitySnapshot, utcnow
from meshnode.identity.source import IdentitySource
from meshnode.telemetry.events import (
    IDENTITY_BUNDLE_UPDATED,
    IDENTITY_LOST,
    IDENTITY_RECOVERED,
    IDENTITY_ROTATED,
    identity_event,
)
from meshnode.telemetry.instruments import instruments

__all__ = ["Clock", "IdentityState", "ServedIdentity"]

log = logging.getLogger("meshnode.identity")

WARN_AT = 0.75
#: seconds issuers put not-before earlier than the issue time, at most (the dev CA: 30, SPIRE: less)
MAX_BACKDATE = 60.0

#: Returns the current time, timezone-aware UTC.
Clock = Callable[[], dt.datetime]


class ServedIdentity(Protocol):
    """What new TLS handshakes present (``meshnode.credentials.ServerCredentials``)."""

    @property
    def served(self) -> IdentitySnapshot: ...

    def subscribe(self, callback: Callable[[IdentitySnapshot], None]) -> Callable[[], None]: ...


def _problem(snapshot: IdentitySnapshot, now: dt.datetime) -> str | None:
    """Why ``snapshot`` cannot be used at ``now``, or None."""
    if now < snapshot.not_before:
        return "is not valid before " + snapshot.not_before.isoformat()
    if now >= snapshot.not_after:
        return f"expired at {snapshot.not_after.isoformat()} without renewal"
    if not snapshot.bundles.get(snapshot.trust_domain):
        return f"comes without a trust bundle for '{snapshot.trust_domain}'"
    return None


def renewal_overdue_at(snapshot: IdentitySnapshot, received: float) -> float:
    """When ``snapshot``'s SVID counts as not renewed (epoch seconds), if it arrived at ``received``.

    An issuer renews at half of the lifetime it gave the SVID, counted from
    when it issued it: after not-before (backdated by up to MAX_BACKDATE)
    and no later than its arrival. 75% of the time from there to expiry
    is past that renewal.
    """
    not_before = snapshot.not_before.timestamp()
    issued = max(not_before, min(received, not_before + MAX_BACKDATE))
    return issued + (snapshot.not_after.timestamp() - issued) * WARN_AT


def _next_change(snapshot: IdentitySnapshot, warn_at: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """When ``snapshot``'s state next changes: it becomes valid, reaches the warning point, or expires."""
    if now < snapshot.not_before:
        return snapshot.not_before
    if now < warn_at:
        return warn_at
    if now < snapshot.not_after:
        return snapshot.not_after
    return None  # expired: only a new snapshot changes anything


class IdentityState:
    """Watches validity on the event loop; calls ``on_health(serving)`` on changes.

    ``served`` is what new handshakes present; without it, the source's
    current snapshot stands for it (a node that serves nothing).
    """

    def __init__(
        self,
        source: IdentitySource,
        on_health: Callable[[bool], Awaitable[None]],
        *,
        served: ServedIdentity | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._source = source
        self._served = served
        self._on_health = on_health
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None
        #: When the watcher re-checks next (None: only on a new snapshot).
        self.next_check: dt.datetime | None = None
        self._warned_serial = ""
        self._closing = False
        self._last = source.current()
        #: (SVID fingerprint, when it arrived): the renewal warning counts from the arrival
        self._received = (self._last.svid_fingerprint, clock().timestamp())
        self._unsubscribe = source.subscribe(self._on_snapshot)
        self._unsubscribe_served = served.subscribe(lambda _s: self.recheck()) if served is not None else None
        self._expiry_watch = instruments().watch_expiry(self._served_snapshot)

    def _on_snapshot(self, snapshot: IdentitySnapshot) -> None:
        """On the source's thread: count and report the change, wake the watcher."""
        previous, self._last = self._last, snapshot
        if snapshot.svid_fingerprint != previous.svid_fingerprint:
            self._received = (snapshot.svid_fingerprint, self._clock().timestamp())
            instruments().rotation()
            identity_event(IDENTITY_ROTATED, snapshot)
        else:
            identity_event(IDENTITY_BUNDLE_UPDATED, snapshot)
        self.recheck()

    def recheck(self) -> None:
        """Re-evaluate health now (thread-safe), e.g. after moving an injected clock."""
        self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def snapshot(self) -> IdentitySnapshot:
        """The identity new handshakes present."""
        return self._served_snapshot()

    def _served_snapshot(self) -> IdentitySnapshot:
        return self._served.served if self._served is not None else self._source.current()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _set(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            await self._on_health(serving)

    async def evaluate(self) -> bool:
        """Compute health from the served certificate and the peers' identity at ``clock()``; returns it."""
        now = self._clock()
        served = self._served_snapshot()
        peers = self._source.current()
        problem = _problem(served, now)
        what = f"the served certificate serial={served.serial}"
        if problem is None and peers is not served:
            problem = _problem(peers, now)
            what = f"the identity for peer calls serial={peers.serial}"
        if problem is not None and self.serving is not False:
            log.error(
                "identity: %s %s; health is NOT_SERVING until the identity source delivers a valid one (%s)%s",
                what, problem, self._source.description, self._why_not_newer(served, peers),
            )
            identity_event(IDENTITY_LOST, served)
        elif problem is None and self.serving is False:
            log.warning("identity: new SVID serial=%s; health is SERVING again", served.serial)
            identity_event(IDENTITY_RECOVERED, served)
        await self._set(problem is None)
        if problem is None:
            self._warn_if_unrenewed(served, now)
        changes = [
            t for t in (_next_change(s, self._warn_at(s, now), now) for s in (served, peers)) if t is not None
        ]
        self.next_check = min(changes) if changes else None
        return problem is None

    def _why_not_newer(self, served: IdentitySnapshot, peers: IdentitySnapshot) -> str:
        if peers.svid_fingerprint != served.svid_fingerprint:
            return f"; the source's SVID serial={peers.serial} could not be served (see the credentials warning)"
        if isinstance(self._source, GuardedSource) and self._source.last_refusal is not None:
            return f"; its newest update was refused: {self._source.last_refusal.message}"
        return ""

    def _warn_at(self, snapshot: IdentitySnapshot, now: dt.datetime) -> dt.datetime:
        fingerprint, received = self._received
        arrived = received if fingerprint == snapshot.svid_fingerprint else now.timestamp()
        return dt.datetime.fromtimestamp(renewal_overdue_at(snapshot, arrived), dt.UTC)

    def _warn_if_unrenewed(self, snap: IdentitySnapshot, now: dt.datetime) -> None:
        if now >= self._warn_at(snap, now) and self._warned_serial != snap.serial:
            self._warned_serial = snap.serial
            log.warning(
                "identity: SVID serial=%s expires at %s (in %.0f s) and has not been renewed; "
                "check the identity source (%s)",
                snap.serial, snap.not_after.isoformat(), snap.seconds_left(now), self._source.description,
            )

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self.evaluate()
            delay = None
            if self.next_check is not None:
                delay = max((self.next_check - self._clock()).total_seconds(), 0.01)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives
            # just as the wake-up completes, and close() would then wait for this task forever
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def close(self) -> None:
        self._closing = True
        self._unsubscribe()
        if self._unsubscribe_served is not None:
            self._unsubscribe_served()
        self._expiry_watch.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
