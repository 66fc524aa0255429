"""Rate-limited log summaries: count repeated events, log one line per interval.

Events that a hostile peer can trigger at will (a failed handshake, a
refused connection) must not cost a log line each: that turns a flood of
connections into a flood of disk writes. :class:`EventSummary` counts them
by a short key (a reason, a uid); its owner asks :meth:`EventSummary.take`
on a timer and logs what it returns. The first event after a quiet interval
is due at once, so a single failure is still reported promptly.

Thread-safe: events may be added from any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["EventSummary", "Summary"]

#: distinct keys counted per interval; further keys are counted under :data:`OTHER`
MAX_KEYS = 64
OTHER = "other"


@dataclass(frozen=True)
class Summary:
    total: int
    by_key: tuple[tuple[str, int], ...]  # most frequent first
    seconds: float  # the counted period: since the previous take (or the start)

    def top(self, n: int = 5, sep: str = " x") -> str:
        """``"a x3, b x1"``: the ``n`` most frequent keys, "+k more" when there are more."""
        shown = ", ".join(f"{key}{sep}{count}" for key, count in self.by_key[:n])
        more = len(self.by_key) - n
        return f"{shown}, +{more} more" if more > 0 else shown


class EventSummary:
    """Counts events by key; :meth:`take` hands them out at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._since = clock()  # start of the counted period: creation, then the last take
        self._last_taken = float("-inf")

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            if key not in self._counts and len(self._counts) >= MAX_KEYS:
                key = OTHER
            self._counts[key] = self._counts.get(key, 0) + n

    def take(self, *, force: bool = False) -> Summary | None:
        """The counts since the last take, if any and if ``interval`` has passed (or ``force``)."""
        with self._lock:
            now = self._clock()
            if not self._counts or (not force and now - self._last_taken < self.interval):
                return None
            seconds = now - self._since
            by_key = tuple(sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0])))
            self._counts = {}
            self._since = self._last_taken = now
        return Summary(sum(n for _, n in by_key), by_key, max(seconds, 0.0))
