"""EndpointWatch: keeps one peer's endpoint list current.

For a peer whose endpoints meshnode resolves (``dns:///``, or host names in
``addresses``; see :mod:`meshnode.resolver`) a watch re-resolves

* when the answer's time is up: its TTL when meshnode asked a DNS server
  itself, else 30 s, and never more often than once a second;
* when :meth:`EndpointWatch.refresh` is called: a connection to an endpoint
  failed (:mod:`meshnode.endpoint_monitor`), so the answer may be stale.
  Requests within a second of the last resolution wait for that second.

A changed list goes to ``on_change`` (on the event loop); the control plane
serves it as EDS (``spiffe-id``) or the channel is rebuilt on it (``dns``).
A failed resolution keeps the last good list and is logged once until a
resolution succeeds again; an empty answer is the truth (the service has no
endpoints now) and is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from meshnode.config.targets import EndpointSpec, HostPort
from meshnode.errors import MeshnodeError
from meshnode.resolver import DEFAULT_TTL, MIN_TTL, Resolution, resolve

__all__ = ["EndpointWatch", "describe"]

log = logging.getLogger("meshnode.peers")

#: After a failed resolution, the next try comes this many seconds later.
RETRY_AFTER_ERROR = 5.0


def describe(endpoints: tuple[HostPort, ...], limit: int = 8) -> str:
    """``a:1, b:1 (+3 more)``: endpoints for a log line, at most ``limit`` of them."""
    if not endpoints:
        return "none"
    shown = ", ".join(str(e) for e in endpoints[:limit])
    return shown if len(endpoints) <= limit else f"{shown} (+{len(endpoints) - limit} more)"


class EndpointWatch:
    """Re-resolves ``spec`` for peer ``peer_name`` and reports each new endpoint list."""

    def __init__(
        self,
        peer_name: str,
        spec: EndpointSpec,
        on_change: Callable[[tuple[HostPort, ...]], None],
        *,
        initial: Resolution | None = None,
        resolver: Callable[[EndpointSpec], Resolution] = resolve,
    ) -> None:
        self.peer_name = peer_name
        self.spec = spec
        self._on_change = on_change
        self._resolve = resolver
        self.endpoints: tuple[HostPort, ...] = initial.endpoints if initial is not None else ()
        self._ttl = initial.ttl if initial is not None else 0.0
        self._last = time.monotonic() if initial is not None else 0.0
        self._wake = asyncio.Event()
        self._failing: str | None = None
        self._task: asyncio.Task[None] | None = None
        #: Resolutions done (successful or not); tests and status wait on it.
        self.resolutions = 0

    def start(self) -> None:
        """Start watching (on the running loop); idempotent."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def refresh(self) -> None:
        """Re-resolve soon (at most once a second); call on the event loop."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            due = self._last + (self._ttl if self._failing is None else RETRY_AFTER_ERROR)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(due - time.monotonic(), 0.0))
            self._wake.clear()
            wait = self._last + MIN_TTL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._once()

    async def _once(self) -> None:
        try:
            result = await asyncio.to_thread(self._resolve, self.spec)
        except MeshnodeError as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # any other failure is a failed resolution too: keep the last good list
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._last = time.monotonic()
            self.resolutions += 1
        if self._failing is not None:
            log.info("peers: resolving peer '%s' (%s) works again", self.peer_name, self.spec.text)
            self._failing = None
        self._ttl = min(max(result.ttl, MIN_TTL), DEFAULT_TTL)
        if result.dropped:
            log.warning("peers: peer '%s' (%s) resolves to %d more endpoints than the %d taken; the rest are "
                        "left out", self.peer_name, self.spec.text, result.dropped, len(result.endpoints))
        if result.endpoints != self.endpoints:
            self._apply(result.endpoints)

    def _failed(self, message: str) -> None:
        if message != self._failing:
            log.warning("peers: cannot resolve peer '%s' (%s), keeping its %d endpoint(s): %s", self.peer_name,
                        self.spec.text, len(self.endpoints), message)
        self._failing = message

    def _apply(self, endpoints: tuple[HostPort, ...]) -> None:
        old, new = set(self.endpoints), set(endpoints)
        added = tuple(e for e in endpoints if e not in old)
        removed = tuple(e for e in self.endpoints if e not in new)
        self.endpoints = endpoints
        log.info("peers: peer '%s' (%s) now has %d endpoint(s): %s; added %s; removed %s", self.peer_name,
                 self.spec.text, len(endpoints), describe(endpoints), describe(added), describe(removed))
        try:
            self._on_change(endpoints)
        except Exception:  # a consumer's failure must not end the watch
            log.exception("peers: applying the new endpoints of peer '%s' failed", self.peer_name)

    async def close(self) -> None:
        """Stop watching; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
