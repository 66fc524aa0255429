"""Which X509-SVID a node takes when the Workload API delivers several.

SPIRE hands a workload one X509-SVID per registration entry that matches
it, each with an optional hint (``spire-server entry create -hint internal``);
the first is the default identity (SPIFFE Workload API, section 5.3). A node takes

* with ``[identity] spiffe_id``: the first SVID whose certificate carries exactly that ID;
* with ``[identity] hint``: the first SVID delivered with exactly that hint;
* with both: the first SVID with that ID and that hint;
* with neither: the first SVID (the default identity).

The ID matched is the one in the certificate (what peers verify), not the
response's ``spiffe_id`` field; an SVID whose certificate names no valid
SPIFFE ID matches no configured ID. When nothing matches, the source raises
(at start) or rejects the update (later) with
:class:`~meshnode.errors.SvidNotDeliveredError`, naming what was delivered.
Pure code: no I/O, no threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from meshnode.identity.x509svid import spiffe_id_of
from meshnode.spiffeid import SpiffeID

__all__ = ["Offered", "SvidSelector", "offered"]

def _shown(text: str, limit: int = 80) -> str:
    """A bounded, quoted rendering of text that came from outside."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


@dataclass(frozen=True)
class Offered:
    """One X509-SVID of a Workload API response: the ID in its certificate, its hint, its position."""

    index: int
    spiffe_id: SpiffeID | None  #: None: the certificate names no valid SPIFFE ID
    hint: str

    def describe(self) -> str:
        name = str(self.spiffe_id) if self.spiffe_id is not None else "an SVID without a valid SPIFFE ID"
        return f"{name} (hint {_shown(self.hint)})" if self.hint else f"{name} (no hint)"


def offered(leaves: Sequence[x509.Certificate], hints: Sequence[str]) -> tuple[Offered, ...]:
    """What a response offers, in order: each leaf's SPIFFE ID and its hint (``""``: none)."""
    out = []
    for index, leaf in enumerate(leaves):
        try:
            spiffe_id: SpiffeID | None = spiffe_id_of(leaf)
        except Exception:  # any unparsable leaf: it can only be taken as the default, and then it is refused
            spiffe_id = None
        out.append(Offered(index, spiffe_id, hints[index] if index < len(hints) else ""))
    return tuple(out)


@dataclass(frozen=True)
class SvidSelector:
    """What ``[identity] spiffe_id`` and ``[identity] hint`` ask for (None: anything).

    Matching is exact; the configuration refuses hints that could never be
    meant (empty, control characters, too long).
    """

    spiffe_id: SpiffeID | None = None
    hint: str | None = None

    @property
    def selects(self) -> bool:
        """True when something is configured (else the first SVID is taken)."""
        return self.spiffe_id is not None or self.hint is not None

    def describe(self) -> str:
        """``[identity] spiffe_id = "..."`` / ``hint = "..."``, as the operator wrote it."""
        parts = []
        if self.spiffe_id is not None:
            parts.append(f'spiffe_id = "{self.spiffe_id}"')
        if self.hint is not None:
            parts.append(f"hint = {_shown(self.hint)}")
        return "[identity] " + " and ".join(parts) if parts else "the first SVID"

    def matches(self, svid: Offered) -> bool:
        if self.spiffe_id is not None and svid.spiffe_id != self.spiffe_id:
            return False
        return self.hint is None or svid.hint == self.hint

    def select(self, svids: Sequence[Offered]) -> Offered | None:
        """The SVID to take, or None when none matches (the caller says where from)."""
        return next((svid for svid in svids if self.matches(svid)), None)
