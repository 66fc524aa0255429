"""Rejected identity updates: reported once per distinct content, never a traceback loop.

Sources read outside input over and over: a file set that stays broken is
read again on every poll, a Workload API server pushes its whole state on
every change. *Any* exception from parsing that input (a malformed DER
extension raises ``ValueError`` deep in cryptography, not
:class:`~meshnode.errors.InvalidIdentityError`) is a rejected update: the
source keeps its last good identity and reports the rejection here, which
logs one WARNING line and calls ``on_error`` (the node counts it in
``meshnode.identity.source_errors``) - once per distinct content. The same
content rejected again is silent; a different bad content is reported
again; an accepted update resets it.

Messages are one line and bounded: they come from exceptions about input an
attacker may control.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

from meshnode.errors import MeshnodeError

__all__ = ["Rejections", "describe_error", "reason_of"]

log = logging.getLogger("meshnode.identity")

_MAX_MESSAGE = 400


def reason_of(exc: BaseException) -> str:
    """What is wrong, in one bounded line: a meshnode error's ``reason`` field, anything else with its type."""
    text = exc.reason if isinstance(exc, MeshnodeError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def describe_error(exc: BaseException) -> str:
    """One bounded line for ``exc``: a meshnode error as it is, anything else with its type."""
    text = str(exc) if isinstance(exc, MeshnodeError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class Rejections:
    """Remembers the last rejected content of one source and reports each new one once."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self._on_error = on_error
        self._lock = threading.Lock()
        self._last: Hashable = None
        #: how many rejections were reported (distinct contents)
        self.count = 0

    def is_last(self, key: Hashable) -> bool:
        """True when ``key`` is the content rejected (and reported) last."""
        return key is not None and key == self._last

    def reject(self, key: Hashable, message: str) -> bool:
        """Report ``message`` unless ``key`` was the last rejected content; True when reported."""
        with self._lock:
            if key == self._last:
                return False
            self._last = key
            self.count += 1
        log.warning("%s", message)
        if self._on_error is not None:
            try:
                self._on_error(message)
            except Exception:  # a faulty callback must not turn the rejection into a loop of tracebacks
                log.warning("identity: the on_error callback failed for: %s", message)
        return True

    def accepted(self) -> None:
        """A good update arrived: the next bad content is reported, even if it was seen before."""
        with self._lock:
            self._last = None
