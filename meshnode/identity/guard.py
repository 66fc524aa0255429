"""The node's identity rules, applied to every update any source publishes.

A source validates an SVID on its own terms (chain, key, bundle of its own
trust domain). What it cannot know is what the node was started as: the
trust domain its server credentials, authorizer and peers were built for,
and, when ``[identity] spiffe_id`` is set, its SPIFFE ID. A Workload API
that later pushes an SVID of another trust domain (a misconfigured or
hostile agent) must not become the node's identity: the TLS stacks would
refuse it anyway, and health would then follow a certificate nobody serves.

:class:`GuardedSource` stands between a source and every consumer (server
credentials, peer channels, authorizer, health). It republishes what passes
:class:`IdentityRules` and refuses the rest: each refusal is counted in
``meshnode.identity.updates_refused`` (by ``error.type``), reported once as
an ``identity.update_refused`` event (a WARNING log line), and the last good
identity stays in use. Callbacks run on the wrapped source's thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from opentelemetry.metrics import MeterProvider

from meshnode.errors import InvalidIdentityError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource, Publisher
from meshnode.spiffeid import SpiffeID
from meshnode.telemetry import attributes as attr
from meshnode.telemetry.events import IDENTITY_UPDATE_REFUSED, identity_event
from meshnode.telemetry.instruments import Instruments, instruments

__all__ = ["GuardedSource", "IdentityRules", "Refusal"]

log = logging.getLogger("meshnode.identity")


@dataclass(frozen=True)
class Refusal:
    """Why an update was refused: a low-cardinality ``kind`` and a sentence for people."""

    kind: str
    message: str


@dataclass(frozen=True)
class IdentityRules:
    """What every identity of one node must satisfy for the node's whole life."""

    trust_domain: str
    #: None: any ID of the trust domain (the registration entry may change the path).
    spiffe_id: SpiffeID | None = None

    def check(self, snapshot: IdentitySnapshot) -> Refusal | None:
        """None when ``snapshot`` may become the node's identity, else why not."""
        if snapshot.trust_domain != self.trust_domain:
            return Refusal(
                "trust_domain",
                f"its SPIFFE ID {snapshot.spiffe_id} is outside the trust domain '{self.trust_domain}' "
                "the node runs in; fix the agent or the workload's registration entry (the node takes "
                "the next good SVID by itself); to move the node, change [identity] trust_domain and restart it",
            )
        if self.spiffe_id is not None and snapshot.spiffe_id != self.spiffe_id:
            return Refusal(
                "spiffe_id",
                f"its SPIFFE ID {snapshot.spiffe_id} is not the configured [identity] spiffe_id "
                f"{self.spiffe_id}; fix the workload's registration entry (the node takes the next good "
                "SVID by itself), or change [identity] spiffe_id and restart the node",
            )
        return None


class GuardedSource(Publisher):
    """An :class:`IdentitySource` that publishes only what passes ``rules``.

    ``first`` is the identity the node booted with (already checked); it is
    published at once, then every update of ``inner`` is offered. Closing
    the guard unsubscribes from ``inner`` and closes it only if ``owns_inner``.
    Refusals count on ``meter_provider`` (default: the global one).
    """

    def __init__(
        self,
        inner: IdentitySource,
        rules: IdentityRules,
        first: IdentitySnapshot,
        *,
        owns_inner: bool = False,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__()
        self._instruments = Instruments(meter_provider) if meter_provider is not None else instruments()
        self.inner = inner
        self.rules = rules
        self.description = inner.description
        self._owns_inner = owns_inner
        self._offer_lock = threading.Lock()
        self._refused_fingerprint = ""
        #: The newest refusal, None once an update is accepted again.
        self.last_refusal: Refusal | None = None
        #: How many updates were refused.
        self.refused = 0
        refusal = rules.check(first)
        if refusal is not None:
            raise InvalidIdentityError(reason=f"{inner.description} delivered an unusable SVID: {refusal.message}",
                                       component="identity")
        self._publish(first)
        self._unsubscribe = inner.subscribe(self._offer)
        self._offer(inner.current())  # an update published before we subscribed

    def _offer(self, snapshot: IdentitySnapshot) -> None:
        refusal = self.rules.check(snapshot)
        if refusal is None:
            with self._offer_lock:
                self._refused_fingerprint = ""
                self.last_refusal = None
            self._publish(snapshot)
            return
        with self._offer_lock:
            self.refused += 1
            self.last_refusal = refusal
            first_time = snapshot.fingerprint != self._refused_fingerprint
            self._refused_fingerprint = snapshot.fingerprint
        self._instruments.update_refused(refusal.kind)
        if first_time:
            kept = self._current
            identity_event(
                IDENTITY_UPDATE_REFUSED,
                kept,
                {
                    attr.ERROR: (
                        f"refused the SVID serial={snapshot.serial} from {self.description}: {refusal.message}; "
                        f"keeping serial={kept.serial if kept is not None else 'none'}"
                    ),
                },
            )

    def close(self) -> None:
        if self._mark_closed():
            self._unsubscribe()
            if self._owns_inner:
                self.inner.close()
