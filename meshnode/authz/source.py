"""Where the authorizer's policy comes from: a fixed value, or a file reloaded on change.

The authorizer depends only on :class:`PolicySource`: ``current()`` returns
an :class:`ActivePolicy` (the policy and its version). The version grows by
one on every successful load, so it can key caches: a decision cached for
version 3 is never served once version 4 is current.

:class:`PolicyFile` polls its A43 file on a background thread (every
``interval`` seconds, 0.3 by default): a change of mtime, size or inode -
or a file written less than two seconds before it was last read, which
mtime granularity cannot tell apart - makes it read the file and compare a
SHA-256 of the content; only different content is parsed. An invalid file
at start raises :class:`~meshnode.errors.PolicyError`. An invalid file
later keeps the last good policy, logs the error (with file, line and
column) once it has been seen on two polls in a row - a writer that
truncates and rewrites in place is not an error - and adds one to the
counter ``meshnode.authz.policy_reload_failures``. Any exception while
parsing a file (a JSON document nested 100,000 deep, a bug in a check)
is such a refused reload, never a traceback on every poll.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from opentelemetry import metrics

from meshnode.authz.a43 import parse_a43
from meshnode.authz.policy import Policy, merge_policies
from meshnode.errors import PolicyError
from meshnode.telemetry.attributes import AUTHZ_POLICY_VERSION, ERROR, POLICY_SOURCE
from meshnode.telemetry.events import POLICY_RELOAD_FAILED, POLICY_RELOADED, identity_event
from meshnode.telemetry.instruments import Instruments, instruments

__all__ = ["ActivePolicy", "PolicyFile", "PolicySource", "StaticPolicy"]

log = logging.getLogger("meshnode.authz")

_RACY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    policy: Policy
    version: int


class PolicySource(Protocol):
    def current(self) -> ActivePolicy: ...


class StaticPolicy:
    """A policy that never changes (version 1)."""

    def __init__(self, policy: Policy) -> None:
        self._active = ActivePolicy(policy, 1)

    def current(self) -> ActivePolicy:
        return self._active


class PolicyFile:
    """An A43 policy file merged with an optional ``base`` policy, reloaded when it changes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        base: Policy | None = None,
        interval: float = 0.3,
        meter_provider: metrics.MeterProvider | None = None,
        start: bool = True,
        validate: Callable[[Policy], None] | None = None,
    ) -> None:
        if not 0.01 <= interval <= 5.0:
            raise PolicyError(reason=f"policy reload interval must be between 0.01 and 5 seconds, not {interval}",
                              component="authz")
        self.path = Path(path)
        self._base = base
        # raises PolicyError for a reloaded policy this node must not run (the first load is the
        # creator's to judge: it reports that one as a boot check)
        self._validate = validate
        self._interval = interval
        # meshnode.authz.policy_reload_failures is defined once, in meshnode.telemetry
        self._instruments = Instruments(meter_provider) if meter_provider is not None else instruments()
        self._lock = threading.Lock()  # one poll at a time (thread and poll() callers)
        try:
            stamp = _stamp(self.path)
            data = self.path.read_bytes()
        except OSError as exc:
            raise PolicyError(reason=f"cannot read policy file {self.path}: {exc.strerror}",
                              component="authz") from None
        self._active = ActivePolicy(self._parse(data, reload=False), 1)
        self._digest = hashlib.sha256(data).digest()
        self._examined = stamp
        self._examined_at = time.time()
        self._failed_key: object = None
        self._failure_reported = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="meshnode-authz-policy", daemon=True)
            self._thread.start()

    def current(self) -> ActivePolicy:
        return self._active

    def poll(self) -> bool:
        """Check the file once; True when a new policy version was loaded."""
        with self._lock:
            return self._poll()

    def _parse(self, data: bytes, *, reload: bool = True) -> Policy:
        """Parse and check one file content; every failure is a PolicyError."""
        try:
            return self._parse_checked(data, reload)
        except PolicyError:
            raise
        except Exception as exc:  # outside input must never escape as a traceback (RecursionError, ...)
            raise PolicyError(
                reason=f"policy file {self.path} cannot be used: {type(exc).__name__}: {_one_line(exc)}",
                component="authz"
            ) from None

    def _parse_checked(self, data: bytes, reload: bool) -> Policy:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError(reason=f"policy file {self.path} is not UTF-8 text", component="authz") from None
        warnings: list[str] = []
        policy = parse_a43(text, str(self.path), warnings)
        for note in warnings:
            log.warning("authz: %s", note)
        merged = merge_policies(self._base, policy, name=policy.name) if self._base is not None else policy
        if reload and self._validate is not None:
            self._validate(merged)
        return merged

    def _poll(self) -> bool:
        try:
            stamp = _stamp(self.path)
            if stamp == self._examined and self._examined_at - stamp[0] / 1e9 > _RACY_SECONDS:
                return False
            data = self.path.read_bytes()
        except OSError as exc:
            self._failed(("OSError", exc.errno), f"cannot read {self.path}: {exc.strerror}")
            return False
        now = time.time()
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._examined, self._examined_at, self._failed_key = stamp, now, None
            return False
        try:
            policy = self._parse(data)
        except PolicyError as exc:
            if self._failed(("PolicyError", digest), exc.reason):
                self._examined, self._examined_at = stamp, now
            return False
        active = ActivePolicy(policy, self._active.version + 1)
        self._active = active
        self._digest, self._examined, self._examined_at, self._failed_key = digest, stamp, now, None
        log.info("authz: loaded policy %r from %s as version %d", policy.name, self.path, active.version)
        identity_event(
            POLICY_RELOADED, attributes={POLICY_SOURCE: str(self.path), AUTHZ_POLICY_VERSION: active.version}
        )
        return True

    def _failed(self, key: tuple[str, object], message: str) -> bool:
        """Report a failure seen on two polls in a row; True once reported."""
        if key != self._failed_key:
            self._failed_key, self._failure_reported = key, False
            return False
        if not self._failure_reported:
            self._failure_reported = True
            log.error(
                "authz: policy reload failed, keeping version %d: %s",
                self._active.version,
                message,
            )
            self._instruments.policy_reload_failure(key[0])  # after the log: tests wait on the count
            identity_event(POLICY_RELOAD_FAILED, attributes={POLICY_SOURCE: str(self.path), ERROR: key[0]})
        return True

    def _run(self) -> None:
        failure = ""
        while not self._stop.wait(self._interval):
            try:
                self.poll()
                failure = ""
            except Exception as exc:  # a bug here must neither stop reloads for good nor log every poll
                if _one_line(exc) != failure:
                    failure = _one_line(exc)
                    log.exception("authz: unexpected error while checking policy file %s", self.path)

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> PolicyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
