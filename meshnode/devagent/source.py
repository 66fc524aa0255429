"""The ``dev`` identity source: an in-process dev CA issuing this node's SVID.

For tests and development mode only (production refuses it). The SVID is
re-issued at half its lifetime, like SPIRE does. With ``state_dir`` the CA
is the one ``meshnode agent`` keeps in the same directory, so nodes on the
dev source and on the dev agent trust each other.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading

from meshnode.devagent.ca import DevCA
from meshnode.identity.rejects import describe_error
from meshnode.identity.source import Publisher
from meshnode.identity.x509svid import build_snapshot
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

__all__ = ["DevSource"]

log = logging.getLogger("meshnode.identity")


class DevSource(Publisher):
    """Issues and rotates an SVID for ``spiffe_id`` from a :class:`DevCA`."""

    def __init__(
        self,
        spiffe_id: str | SpiffeID,
        *,
        ca: DevCA | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        svid_ttl: dt.timedelta = dt.timedelta(hours=1),
        dns_names: tuple[str, ...] = (),
        map_dns: bool = True,
    ) -> None:
        super().__init__()
        self.spiffe_id = spiffe_id if isinstance(spiffe_id, SpiffeID) else parse_spiffe_id(spiffe_id)
        self.ca = ca or DevCA(self.spiffe_id.trust_domain, state_dir=state_dir)
        self.description = f"dev CA for {self.ca.trust_domain} (in-process)"
        self._ttl = svid_ttl
        self._dns_names = dns_names
        self._map_dns = map_dns
        self._wake = threading.Event()
        self.rotate()
        self._thread = threading.Thread(target=self._run, name="meshnode-dev-source", daemon=True)
        self._thread.start()

    def rotate(self) -> None:
        """Issue a fresh SVID now and publish it with the CA's current bundle."""
        issued = self.ca.issue(self.spiffe_id, self._ttl, dns_names=self._dns_names, map_dns=self._map_dns)
        snapshot = build_snapshot(issued.chain, issued.private_key, {self.ca.trust_domain: self.ca.bundle})
        published = self._publish(snapshot)
        if published is not None:
            log.info(
                "identity: dev SVID issued for %s serial=%s not_after=%s",
                self.spiffe_id, published.serial, published.not_after.isoformat(),
            )

    def _run(self) -> None:
        failure = ""
        while not self.closed:
            current = self._current
            wait = current.seconds_left() / 2 if current is not None else 1.0
            if self._wake.wait(timeout=max(wait, 0.05)):
                return
            if not self.closed:
                try:
                    self.rotate()
                    failure = ""
                except Exception as exc:  # keep serving the current SVID, try again soon; log each cause once
                    if describe_error(exc) != failure:
                        failure = describe_error(exc)
                        log.exception("identity: dev SVID rotation failed; retrying every second")
                    self._wake.wait(1.0)

    def close(self) -> None:
        if self._mark_closed():
            self._wake.set()
            if threading.current_thread() is not self._thread:
                self._thread.join(timeout=5)
