"""The identity source protocol and the publisher every source builds on.

A source owns whatever it needs (a Workload API stream, a file watcher, a
dev CA timer), turns what it gets into :class:`IdentitySnapshot` values and
publishes them. Consumers depend on the smallest protocol they need:
:class:`SvidSource` (the current SVID, as go-spiffe's ``x509svid.Source``),
:class:`~meshnode.bundle.BundleSource` (a trust domain's bundle; a snapshot is
one), or :class:`IdentitySource` (an SVID source that also publishes every
change); a plain :class:`StaticSource` satisfies them all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from meshnode.errors import ClosedError, IdentityUnavailableError
from meshnode.identity.snapshot import IdentitySnapshot

__all__ = ["IdentitySource", "Publisher", "StaticSource", "Subscriber", "SvidSource"]

log = logging.getLogger("meshnode.identity")

Subscriber = Callable[[IdentitySnapshot], None]


class SvidSource(Protocol):
    """Anything that gives the current X.509-SVID (with its bundles) as one snapshot."""

    def current(self) -> IdentitySnapshot:
        """The newest snapshot; raises IdentityUnavailableError if none yet."""
        ...


@runtime_checkable
class IdentitySource(SvidSource, Protocol):
    """Where a node's identity comes from: an SVID source that publishes every change."""

    #: One line for people: "workload-api unix:///run/spire/agent.sock".
    description: str

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(snapshot)`` on every new generation; returns an unsubscribe function.

        Callbacks run on the source's thread: they must be short and must not block.
        """
        ...

    def close(self) -> None:
        """Release what the source owns; idempotent."""
        ...


class Publisher:
    """Holds the current snapshot, numbers generations and notifies subscribers.

    Sources call :meth:`_publish` with a validated snapshot; a snapshot with
    the same material as the current one is dropped (the Workload API pushes
    unchanged state too), so ``generation`` grows only on real changes.
    """

    description = "identity"

    def __init__(self) -> None:
        self._state_lock = threading.Lock()
        self._current: IdentitySnapshot | None = None
        self._subscribers: list[Subscriber] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def current(self) -> IdentitySnapshot:
        snapshot = self._current
        if snapshot is None:
            raise IdentityUnavailableError(reason=f"{self.description} has not delivered an SVID yet",
                                           component="identity")
        return snapshot

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        with self._state_lock:
            if self._closed:
                raise ClosedError(f"identity: {self.description} is closed")
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._state_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _publish(self, snapshot: IdentitySnapshot) -> IdentitySnapshot | None:
        """Publish ``snapshot`` as the next generation; None if nothing changed."""
        with self._state_lock:
            if self._closed:
                return None
            previous = self._current
            if previous is not None and previous.fingerprint == snapshot.fingerprint:
                return None
            generation = previous.generation + 1 if previous is not None else 1
            published = snapshot.with_generation(generation)
            self._current = published
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(published)
            except Exception:  # a subscriber's bug must not stop identity updates
                log.exception("identity: a subscriber failed on generation %d", generation)
        return published

    def _mark_closed(self) -> bool:
        """Mark closed; True the first time (so close() stays idempotent)."""
        with self._state_lock:
            if self._closed:
                return False
            self._closed = True
            self._subscribers.clear()
            return True

    def close(self) -> None:
        self._mark_closed()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StaticSource(Publisher):
    """A fixed identity: a plain snapshot standing where a live source goes.

    :meth:`set` publishes a replacement (tests use it to rotate by hand).
    """

    def __init__(self, snapshot: IdentitySnapshot, description: str = "static identity") -> None:
        super().__init__()
        self.description = description
        self._publish(snapshot)

    def set(self, snapshot: IdentitySnapshot) -> IdentitySnapshot | None:
        return self._publish(snapshot)
