"""Wait for log records instead of sleeping: what an operator would read, as an event."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LogWatch", "watch_logs"]


class LogWatch(logging.Handler):
    """Collects the records of one logger (and its children) and wakes waiters on each."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self._cond.notify_all()

    def messages(self, containing: str = "") -> list[str]:
        with self._cond:
            return [m for m in (r.getMessage() for r in self.records) if containing in m]

    def wait_for(self, containing: str, *, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Block until ``count`` messages contain ``containing``; returns them (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := self.messages(containing)) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"no log line with {containing!r} within {timeout} s; got {self.messages()}"
                self._cond.wait(left)
        return found


@contextmanager
def watch_logs(name: str = "meshnode", level: int = logging.INFO) -> Iterator[LogWatch]:
    """``with watch_logs("meshnode.identity") as logs: ... logs.wait_for("refused")``."""
    logger = logging.getLogger(name)
    watch = LogWatch()
    old_level = logger.level
    logger.addHandler(watch)
    logger.setLevel(min(level, old_level) if old_level else level)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(old_level)
