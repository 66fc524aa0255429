"""Which certificate provider slot the served Clusters name: home, fresh after a rotation, home again.

The bootstrap declares every certificate provider in ``slots`` copies
(:mod:`meshnode.xds.bootstrap`), each reading its own copy of the files,
all with the same content. What gRPC (1.85.3) does with them decides the
plan:

* a provider instance is built when a Cluster first names it, and reads
  its files right then; afterwards it re-reads them only every refresh
  interval (``FileWatcherCertificateProvider``: ``ForceUpdate()`` in the
  constructor, then a thread that waits ``refresh_interval`` between
  reads; grpc src/core/credentials/transport/tls/grpc_tls_certificate_provider.cc);
* it is kept while anything holds it: the subchannels and connections of
  the Cluster version that named it, *and* the child policies that
  ``xds_cluster_impl`` created with the first Cluster version it saw,
  which keep those creation arguments for the channel's life
  (src/core/load_balancing/xds/xds_cluster_impl.cc, ``CreateChildPolicyLocked``).
  So the slot a channel started with stays alive, and stale between re-reads;
* every new Cluster version gets a new ``XdsCertificateProvider``, which
  channel arguments compare by address
  (src/core/xds/grpc/xds_certificate_provider.h), so the balancer makes new
  subchannels: new handshakes right away, calls in flight finishing on the
  old connections.

Hence: slot 0 is *home*, where channels start and where the Clusters stay
between rotations. A rotation moves the Clusters to a *fresh* slot (1, 2,
..., round robin, never the current one), whose instance nobody holds, so
gRPC builds it and it reads the new files at once: the next handshakes
present the new certificate. The slot a rotation left is still held until
gRPC has connected the new subchannels (milliseconds; the old ones carry
the calls meanwhile), so back-to-back rotations need more than two fresh
slots: with three (the default, :data:`~meshnode.xds.bootstrap.PROVIDER_SLOTS`),
two rotations closer together than that, such as a new bundle and the
first SVID of its CA, still each get a slot nobody holds. Once home's instance has surely re-read the
files (two refresh intervals later) the Clusters go home again, so
channels made after that pin home, not a fresh slot. A fresh slot that a
channel made during that window still pins can be stale when its turn
comes again; then its connections are redone from home, at most two
refresh intervals later. Every rotation makes two rounds of new
connections (like a ``dns`` peer's new channel, one more).
"""

from __future__ import annotations

import threading

__all__ = ["HOME", "SlotPlan"]

HOME = 0


class SlotPlan:
    """The slot to serve; thread-safe. ``slots`` 1 means no fresh slots: always home."""

    def __init__(self, slots: int) -> None:
        #: how many slots the bootstrap declares
        self.count = slots
        self._lock = threading.Lock()
        self._current = HOME
        self._last_fresh = HOME
        #: rotations so far; :meth:`settle` takes the count a return home was planned for
        self.rotations = 0

    @property
    def current(self) -> int:
        return self._current

    def rotate(self) -> int | None:
        """The files changed: the fresh slot to serve now (None: no fresh slots), and count the rotation."""
        with self._lock:
            if self.count == 1:
                return None
            self._last_fresh = self._last_fresh % (self.count - 1) + 1
            self._current = self._last_fresh
            self.rotations += 1
            return self._current

    def settle(self, rotation: int) -> bool:
        """Go home, if ``rotation`` is still the latest rotation and the slot is not home; True if so."""
        with self._lock:
            if rotation != self.rotations or self._current == HOME:
                return False
            self._current = HOME
            return True
