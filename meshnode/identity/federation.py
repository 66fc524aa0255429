"""FederatedSource: any identity source plus a directory of federated bundles.

```python
source = FederatedSource(WorkloadApiSource(socket), Path("/run/meshnode/federated"))
```

``[identity] federated_bundles_dir`` works with every source (``files``,
``workload-api``, ``dev``): the node wraps the configured source in this
one. Each snapshot it publishes is the inner source's newest snapshot with
the directory's bundles (:class:`~meshnode.identity.bundle_dir.BundleDir`)
added: for a trust domain both deliver (the Workload API's federated
bundles, and a file), the union of their CAs. The node's own trust domain
is never taken from the directory.

A new snapshot goes out when the inner source publishes one and when a scan
of the directory (every ``poll_interval`` seconds, on this source's thread)
changes the bundles: a trust domain added to the directory is trusted by
every consumer of the source (server credentials, the authorizer, peer
channels and the xDS control plane) from the next handshake on, one removed
is not. Generations are this source's own and grow only on real changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshnode.identity.bundle_dir import BundleDir
from meshnode.identity.rejects import describe_error
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource, Publisher

__all__ = ["FederatedSource", "with_bundles"]

log = logging.getLogger("meshnode.identity")


def with_bundles(
    snapshot: IdentitySnapshot, extra: Mapping[str, tuple[x509.Certificate, ...]]
) -> IdentitySnapshot:
    """``snapshot`` with the CAs of ``extra`` added to its bundles (never to its own trust domain's)."""
    bundles = dict(snapshot.bundles)
    for td, certs in extra.items():
        if td == snapshot.trust_domain:
            continue
        have = bundles.get(td, ())
        known = {c.public_bytes(serialization.Encoding.DER) for c in have}
        bundles[td] = have + tuple(c for c in certs if c.public_bytes(serialization.Encoding.DER) not in known)
    return IdentitySnapshot(snapshot.spiffe_id, snapshot.chain, snapshot.private_key, bundles, snapshot.generation)


class FederatedSource(Publisher):
    """Publishes ``inner``'s snapshots with the bundles of ``directory`` added; owns (closes) ``inner``."""

    def __init__(
        self,
        inner: IdentitySource,
        directory: Path,
        *,
        poll_interval: float = 0.5,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.bundle_dir = BundleDir(directory, on_error=on_error)
        self.description = f"{inner.description}, federated bundles from {directory}"
        self._interval = poll_interval
        self._merge_lock = threading.Lock()
        self._scan_lock = threading.Lock()  # poll() may be called while the thread polls too
        self._stop = threading.Event()
        try:
            self.bundle_dir.scan(inner.current().trust_domain, at_once=True)
            self._unsubscribe = inner.subscribe(self._on_inner)
            self._merge()
        except BaseException:
            inner.close()
            raise
        self._thread = threading.Thread(target=self._run, name="meshnode-federated-bundles", daemon=True)
        self._thread.start()

    @property
    def errors(self) -> int:
        """How many problems with the directory were reported (each distinct one once)."""
        return self.bundle_dir.errors

    def poll(self) -> IdentitySnapshot | None:
        """Scan the directory once; publish and return a new snapshot if its bundles changed."""
        with self._scan_lock:
            if not self.bundle_dir.scan(self.inner.current().trust_domain):
                return None
            return self._merge()

    def _on_inner(self, _snapshot: IdentitySnapshot) -> None:
        self._merge()  # the inner source's newest, which may be newer than _snapshot

    def _merge(self) -> IdentitySnapshot | None:
        """Publish the inner source's newest snapshot with the directory's bundles (serialised)."""
        with self._merge_lock:
            before = self._current
            published = self._publish(with_bundles(self.inner.current(), self.bundle_dir.bundles))
        if published is not None and before is not None and set(published.bundles) != set(before.bundles):
            log.info("identity: trust bundles now for %s (generation %d)", ", ".join(sorted(published.bundles)),
                     published.generation)
        return published

    def _run(self) -> None:
        failure = ""
        while not self._stop.wait(self._interval):
            try:
                self.poll()
                failure = ""
            except Exception as exc:  # a bug here must neither stop polling nor log every poll
                if describe_error(exc) != failure:
                    failure = describe_error(exc)
                    log.exception("identity: scanning %s failed; keeping the bundles in use", self.bundle_dir.path)

    def close(self) -> None:
        if self._mark_closed():
            self._stop.set()
            self._unsubscribe()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
            self.inner.close()
