"""Sources of JWT bundles besides the Workload API: fixed, a directory of files, and several merged.

* :class:`StaticJwtBundles`: a fixed set (tests, tools);
* :class:`JwtBundleDir`: ``[identity] jwt_bundles_dir``, polled on a thread
  of its own with the same rules as federated X.509 bundles
  (:class:`~meshnode.identity.bundle_dir.BundleFiles`: last good bundle per
  trust domain, a bad file reported once, a file gone twice in a row drops
  its trust domain), ``<trust-domain>.json`` SPIFFE bundles only;
* :class:`MergedJwtBundles`: several sources as one (the identity source's
  bundles first, then the directory): per trust domain the union of their
  keys, the first source's key winning on a key id both have.

``current()`` is called on every call the authorizer checks: each source
returns the same :class:`~meshnode.jwtsvid.bundle.JwtBundleSet` object
until something changes, and :class:`MergedJwtBundles` merges again only
then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from meshnode.identity.bundle_dir import BundleFiles
from meshnode.identity.rejects import describe_error
from meshnode.jwtsvid.bundle import JWT_BUNDLES, JwtBundle, JwtBundleSet, merge_bundles
from meshnode.jwtsvid.validate import JwtBundleSource

__all__ = ["JwtBundleDir", "MergedJwtBundles", "StaticJwtBundles"]

log = logging.getLogger("meshnode.jwt")


class StaticJwtBundles:
    """A fixed bundle set; :meth:`set` replaces it (a new generation)."""

    def __init__(self, bundles: dict[str, JwtBundle] | JwtBundleSet, description: str = "fixed JWT bundles") -> None:
        self.description = description
        self._set = bundles if isinstance(bundles, JwtBundleSet) else JwtBundleSet(bundles, 1)

    def current(self) -> JwtBundleSet:
        return self._set

    def set(self, bundles: dict[str, JwtBundle]) -> JwtBundleSet:
        self._set = JwtBundleSet(bundles, self._set.generation + 1)
        return self._set

    def close(self) -> None:
        """Nothing to release."""


class JwtBundleDir:
    """``[identity] jwt_bundles_dir``: the JWT bundles of a directory of SPIFFE bundle files, polled."""

    def __init__(
        self,
        directory: Path,
        own_trust_domain: str,
        *,
        poll_interval: float = 0.5,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.files: BundleFiles[JwtBundle] = BundleFiles(directory, kind=JWT_BUNDLES, on_error=on_error)
        self.description = f"JWT bundles from {directory}"
        self._own = own_trust_domain
        self._interval = poll_interval
        self._set = JwtBundleSet({})
        self._scan_lock = threading.Lock()
        self._stop = threading.Event()
        self.poll(at_once=True)
        self._thread = threading.Thread(target=self._run, name="meshnode-jwt-bundle-dir", daemon=True)
        self._thread.start()

    def current(self) -> JwtBundleSet:
        return self._set

    def poll(self, *, at_once: bool = False) -> bool:
        """Scan the directory once; True when the bundles changed."""
        with self._scan_lock:
            if not self.files.scan(self._own, at_once=at_once):
                return False
            self._set = JwtBundleSet(dict(self.files.bundles), self._set.generation + 1)
            return True

    def _run(self) -> None:
        failure = ""
        while not self._stop.wait(self._interval):
            try:
                self.poll()
                failure = ""
            except Exception as exc:  # a bug here must neither stop polling nor log every poll
                if describe_error(exc) != failure:
                    failure = describe_error(exc)
                    log.exception("jwt: scanning %s failed; keeping the JWT bundles in use", self.files.path)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)


class MergedJwtBundles:
    """Several bundle sources as one; the earlier source wins on a key id both have for a trust domain."""

    def __init__(self, sources: Sequence[JwtBundleSource]) -> None:
        self.sources = tuple(sources)
        self.description = "; ".join(s.description for s in self.sources) or "no JWT bundles"
        self._lock = threading.Lock()
        self._state: tuple[tuple[JwtBundleSet, ...], JwtBundleSet] = ((), JwtBundleSet({}))

    def current(self) -> JwtBundleSet:
        inputs = tuple(s.current() for s in self.sources)
        seen, merged = self._state  # one read: the inputs and the set merged from them
        if _same(inputs, seen):
            return merged
        with self._lock:
            seen, merged = self._state
            if not _same(inputs, seen):
                bundles = merge_bundles(*(s.bundles for s in inputs)) if len(inputs) != 1 else inputs[0].bundles
                merged = JwtBundleSet(bundles, merged.generation + 1)
                self._state = (inputs, merged)
            return merged

    def close(self) -> None:
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def _same(a: tuple[JwtBundleSet, ...], b: tuple[JwtBundleSet, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
