"""Tracks the node's SVID validity, drives health, and reports identity telemetry.

Health is SERVING only while the node holds an unexpired SVID and a bundle.
When the SVID expires without renewal (agent gone too long) it turns
NOT_SERVING, and back to SERVING when a new SVID arrives. A warning is
logged once the SVID is past 75% of its lifetime without renewal (SPIRE
renews at 50%). The lifetime counts from when the SVID was issued, not
from its not-before: issuers backdate not-before (the dev CA by 30 s), and
with a short TTL 75% of the backdated lifetime falls before the issuer's
half-life renewal, which made the warning fire on every rotation of an
SVID renewed on time. The issue time is taken as the SVID's arrival here,
but at most :data:`MAX_BACKDATE` after not-before, so an SVID that arrives
already old (a node started late in its life) is still warned about.

Telemetry (OpenTelemetry API only, so a no-op until the application turns
it on): every new SVID counts in ``meshnode.identity.rotations`` and is an
``identity.rotated`` event; a bundle-only change is ``identity.bundle_updated``;
expiry without renewal is ``identity.lost`` and the next SVID
``identity.recovered``; ``meshnode.identity.seconds_to_expiry`` is observed
from the current snapshot. Events carry the SVID serial and not-after, never
key material.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

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

__all__ = ["IdentityState"]

log = logging.getLogger("meshnode.identity")

WARN_AT = 0.75
#: seconds issuers put not-before earlier than the issue time, at most (the dev CA: 30, SPIRE: less)
MAX_BACKDATE = 60.0


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


class IdentityState:
    """Watches expiry on the event loop; calls ``on_health(serving)`` on changes."""

    def __init__(self, source: IdentitySource, on_health: Callable[[bool], Awaitable[None]]) -> None:
        self._source = source
        self._on_health = on_health
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.serving: bool | None = None
        self._last = source.current()
        #: (SVID fingerprint, when it arrived): the renewal warning counts from the arrival
        self._received = (self._last.svid_fingerprint, time.time())
        self._unsubscribe = source.subscribe(self._on_snapshot)
        self._expiry_watch = instruments().watch_expiry(source.current)

    def _on_snapshot(self, snapshot: IdentitySnapshot) -> None:
        """On the source's thread: count and report the change, wake the expiry watch."""
        previous, self._last = self._last, snapshot
        if snapshot.svid_fingerprint != previous.svid_fingerprint:
            self._received = (snapshot.svid_fingerprint, time.time())
            instruments().rotation()
            identity_event(IDENTITY_ROTATED, snapshot)
        else:
            identity_event(IDENTITY_BUNDLE_UPDATED, snapshot)
        self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def snapshot(self) -> IdentitySnapshot:
        return self._source.current()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _set(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            await self._on_health(serving)

    async def _run(self) -> None:
        warned_serial = ""
        while True:
            snap = self._source.current()
            now = utcnow()
            valid = snap.not_before <= now < snap.not_after and bool(snap.bundles.get(snap.trust_domain))
            if not valid and self.serving is not False:
                why = "is not valid before " + snap.not_before.isoformat() if now < snap.not_before else (
                    f"expired at {snap.not_after.isoformat()} without renewal"
                )
                log.error(
                    "identity: SVID serial=%s %s; health is NOT_SERVING until the identity source "
                    "delivers a valid one (%s)", snap.serial, why, self._source.description,
                )
                identity_event(IDENTITY_LOST, snap)
            elif valid and self.serving is False:
                log.warning("identity: new SVID serial=%s; health is SERVING again", snap.serial)
                identity_event(IDENTITY_RECOVERED, snap)
            await self._set(valid)
            now_ts = now.timestamp()
            fingerprint, received = self._received
            warn_at = renewal_overdue_at(snap, received if fingerprint == snap.svid_fingerprint else now_ts)
            if valid and now_ts >= warn_at and warned_serial != snap.serial:
                warned_serial = snap.serial
                log.warning(
                    "identity: SVID serial=%s expires at %s (in %.0f s) and has not been renewed; "
                    "check the identity source (%s)",
                    snap.serial, snap.not_after.isoformat(), snap.seconds_left(now), self._source.description,
                )
            if valid:
                next_check = warn_at if now_ts < warn_at else snap.not_after.timestamp()
                delay = max(next_check - now_ts, 0.01)
            else:
                delay = 3600.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def close(self) -> None:
        self._unsubscribe()
        self._expiry_watch.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
