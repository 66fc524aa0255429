"""SPIFFE IDs: the one strict validator, and the ID <-> DNS name mapping.

Validation is py-spiffe's parser plus the rules of the SPIFFE ID spec that
py-spiffe lets through: it lowercases an uppercase scheme or trust domain
instead of rejecting it, and it does not enforce the 2048-byte ID and
255-byte trust-domain limits. Every SPIFFE ID meshnode reads (config,
policies, peer certificates) goes through :func:`parse_spiffe_id`.

The DNS name mapping
--------------------
grpcio clients verify a server only by a DNS name (see the facts file), so
every meshnode identity has a DNS name derived from its SPIFFE ID, and the
dev agent puts it in each SVID as a DNS SAN. The mapping is injective: it
has an inverse (:func:`spiffe_id_from_dns_name`), so no two IDs share a name.

* Each path segment becomes one DNS label, in reverse order (the most
  specific first, like a host name). A segment made only of ``a-z``,
  ``0-9`` and inner single hyphens is kept as it is; any other segment
  (uppercase, ``.``, ``_``, ``--``, leading/trailing ``-``) becomes
  ``e--`` followed by its bytes in lowercase base32 without padding.
* Then comes the separator label ``spiffe--id``.
* Then the trust domain's own dot-separated labels, each kept as it is or
  encoded the same way.

Labels containing ``--`` are never kept as they are, so a kept label,
an encoded label and the separator can always be told apart.

    spiffe://example.org/ns/prod/sa/api -> api.sa.prod.ns.spiffe--id.example.org
    spiffe://example.org/Billing        -> e--ijuwy3djnztq.spiffe--id.example.org

An ID whose name would break DNS limits (a label over 63 bytes, a name over
253) has no DNS name: :func:`dns_name_for` raises, and the message says to
use ``verify = "spiffe-id"`` or to set ``server_name`` for that peer.
``meshnode dns-name SPIFFE_ID`` prints the name to give SPIRE (``-dns``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from spiffe import SpiffeId as _PySpiffeId
from spiffe.errors import PySpiffeError

from meshnode.errors import InvalidSpiffeIdError

__all__ = [
    "MAX_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SpiffeID",
    "dns_name_for",
    "parse_spiffe_id",
    "parse_trust_domain",
    "spiffe_id_from_dns_name",
]

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_PLAIN_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_SEPARATOR = "spiffe--id"
_ENCODED_PREFIX = "e--"
_MAX_LABEL = 63
_MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class SpiffeID:
    """A validated SPIFFE ID. Build it with :func:`parse_spiffe_id`."""

    trust_domain: str
    path: str  # "" or "/seg/seg..."

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def parse_trust_domain(value: str) -> str:
    """Validate a trust domain name (``example.org`` or ``spiffe://example.org``).

    Returns the bare name. Uppercase is rejected, not lowercased.
    """
    if not isinstance(value, str) or not value:
        raise InvalidSpiffeIdError("spiffeid: trust domain is empty; use a name like 'example.org'")
    name = value[len(SCHEME) :] if value.startswith(SCHEME) else value
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise InvalidSpiffeIdError(
            f"spiffeid: trust domain {name[:40]!r}... is longer than "
            f"{MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    if not _TRUST_DOMAIN_RE.fullmatch(name):
        hint = " (trust domains must be lowercase)" if name.lower() != name else ""
        raise InvalidSpiffeIdError(
            f"spiffeid: invalid trust domain {name!r}: only a-z, 0-9, '.', '-' and '_' "
            f"are allowed{hint}"
        )
    return name


def parse_spiffe_id(value: str) -> SpiffeID:
    """Parse ``value`` as a SPIFFE ID under the full spec, or raise
    :class:`~meshnode.errors.InvalidSpiffeIdError` naming the problem."""
    if not isinstance(value, str):
        raise InvalidSpiffeIdError(f"spiffeid: expected a string, got {type(value).__name__}")
    shown = value if len(value) <= 80 else value[:77] + "..."
    if len(value.encode()) > MAX_ID_BYTES:
        raise InvalidSpiffeIdError(
            f"spiffeid: invalid SPIFFE ID {shown!r}: longer than {MAX_ID_BYTES} bytes"
        )
    if not value.startswith(SCHEME):
        raise InvalidSpiffeIdError(
            f"spiffeid: invalid SPIFFE ID {shown!r}: must start with 'spiffe://' (lowercase)"
        )
    rest = value[len(SCHEME) :]
    trust_domain, slash, _ = rest.partition("/")
    try:
        parse_trust_domain(trust_domain)
    except InvalidSpiffeIdError as exc:
        reason = str(exc).removeprefix("spiffeid: ")
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: {reason}") from None
    if slash and value.endswith("/"):
        raise InvalidSpiffeIdError(
            f"spiffeid: invalid SPIFFE ID {shown!r}: trailing '/' is not allowed"
        )
    if "%" in value:
        raise InvalidSpiffeIdError(
            f"spiffeid: invalid SPIFFE ID {shown!r}: percent-encoding is not allowed"
        )
    try:
        parsed = _PySpiffeId(value)
    except PySpiffeError as exc:
        reason = str(exc).rsplit(": ", 1)[-1]
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: {reason}") from None
    if str(parsed) != value:  # py-spiffe normalised something: the input was not canonical
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: not in canonical form")
    return SpiffeID(trust_domain=trust_domain, path=parsed.path)


def _encode_label(text: str) -> str:
    if "--" not in text and _PLAIN_LABEL_RE.fullmatch(text):
        label = text
    else:
        label = _ENCODED_PREFIX + base64.b32encode(text.encode()).decode().rstrip("=").lower()
    if len(label) > _MAX_LABEL:
        raise ValueError(text)
    return label


def _decode_label(label: str) -> str:
    if label.startswith(_ENCODED_PREFIX):
        body = label[len(_ENCODED_PREFIX) :].upper()
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode()
    if "--" in label or not _PLAIN_LABEL_RE.fullmatch(label):
        raise ValueError(label)
    return label


def dns_name_for(spiffe_id: str | SpiffeID) -> str:
    """The DNS name that stands for ``spiffe_id`` (see the module docs)."""
    sid = spiffe_id if isinstance(spiffe_id, SpiffeID) else parse_spiffe_id(spiffe_id)
    try:
        labels = [_encode_label(seg) for seg in reversed(sid.segments)]
        labels.append(_SEPARATOR)
        labels.extend(_encode_label(part) for part in sid.trust_domain.split("."))
    except ValueError as exc:
        raise InvalidSpiffeIdError(
            f"spiffeid: {sid} has no DNS name: its part {str(exc)[:40]!r} is too long for a "
            "DNS label; use verify = \"spiffe-id\" for this peer, or set server_name"
        ) from None
    name = ".".join(labels)
    if len(name) > _MAX_NAME:
        raise InvalidSpiffeIdError(
            f"spiffeid: {sid} has no DNS name: it would be {len(name)} characters "
            f"(DNS allows {_MAX_NAME}); use verify = \"spiffe-id\" for this peer, or set server_name"
        )
    return name


def spiffe_id_from_dns_name(name: str) -> SpiffeID:
    """The inverse of :func:`dns_name_for`; raises InvalidSpiffeIdError."""
    labels = name.lower().rstrip(".").split(".")
    try:
        cut = labels.index(_SEPARATOR)
        segments = [_decode_label(label) for label in reversed(labels[:cut])]
        td_parts = [_decode_label(label) for label in labels[cut + 1 :]]
    except (ValueError, UnicodeDecodeError, base64.binascii.Error):  # type: ignore[attr-defined]
        raise InvalidSpiffeIdError(
            f"spiffeid: {name!r} is not a DNS name made by meshnode's SPIFFE ID mapping"
        ) from None
    path = "".join("/" + seg for seg in segments)
    return parse_spiffe_id(f"{SCHEME}{'.'.join(td_parts)}{path}")
