"""SPIFFE IDs and trust domains: the one strict parser, the types, and the ID <-> DNS name mapping.

The parser implements section 2 of the SPIFFE ID spec itself, character by
character, so that no library's leniency leaks through (py-spiffe lowercases
an uppercase scheme or trust domain, and its pattern's end anchor lets a
final newline through: ``spiffe://example.org/a\n`` parsed as an ID whose
path ends in a newline):

* the scheme is exactly ``spiffe://`` (lowercase);
* the trust domain is one or more of ``a-z 0-9 . - _`` (no uppercase, no
  port, no userinfo, no percent-encoding), at most 255 bytes;
* the path is empty or ``/segment`` repeated; a segment is one or more of
  ``A-Z a-z 0-9 . - _`` and is neither ``.`` nor ``..``; no empty segment,
  no trailing ``/``, no query or fragment;
* the whole ID is at most 2048 bytes.

Every SPIFFE ID meshnode reads (config, policies, peer certificates, SVID
files, Workload API responses) goes through :func:`parse_spiffe_id`; the
types validate on construction, so an invalid :class:`SpiffeID` or
:class:`TrustDomain` cannot exist.

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
from dataclasses import dataclass, field

from meshnode.errors import InvalidSpiffeIdError

__all__ = [
    "MAX_ID_BYTES",
    "MAX_TRUST_DOMAIN_BYTES",
    "SpiffeID",
    "TrustDomain",
    "dns_name_for",
    "parse_spiffe_id",
    "parse_trust_domain",
    "spiffe_id_from_dns_name",
]

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

# re.fullmatch, never match/search with "$": "$" also matches before a final newline
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_PLAIN_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_SEPARATOR = "spiffe--id"
_ENCODED_PREFIX = "e--"
_MAX_LABEL = 63
_MAX_NAME = 253


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


def _trust_domain_problem(name: str) -> str | None:
    if not name:
        return "the trust domain is empty; use a name like 'example.org'"
    if len(name.encode()) > MAX_TRUST_DOMAIN_BYTES:
        return f"the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
    if not _TRUST_DOMAIN_RE.fullmatch(name):
        hint = " (trust domains must be lowercase)" if name.lower() != name else ""
        if ":" in name:
            hint = " (no port)"
        elif "@" in name:
            hint = " (no userinfo)"
        return f"invalid trust domain {_shown(name)!r}: only a-z, 0-9, '.', '-' and '_' are allowed{hint}"
    return None


def _path_problem(path: str) -> str | None:
    if not path:
        return None
    if not path.startswith("/"):
        return f"the path {_shown(path)!r} must be empty or start with '/'"
    for segment in path[1:].split("/"):
        if not segment:
            return "empty segments are not allowed ('//' or a trailing '/')"
        if segment in (".", ".."):
            return "path segments '.' and '..' are not allowed"
        if not _SEGMENT_RE.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT_RE.fullmatch(c))
            return (f"path segment {_shown(segment)!r} has an invalid character {bad!r}: only A-Z, a-z, 0-9, "
                    "'.', '-' and '_' (no percent-encoding, query or fragment)")
    return None


class TrustDomain(str):
    """A validated trust domain name (``example.org``); a ``str``, so it keys dicts of bundles."""

    __slots__ = ()

    def __new__(cls, name: str) -> TrustDomain:
        if isinstance(name, TrustDomain):
            return name
        if not isinstance(name, str):
            raise InvalidSpiffeIdError(f"spiffeid: a trust domain is a string, not {type(name).__name__}")
        problem = _trust_domain_problem(name)
        if problem is not None:
            raise InvalidSpiffeIdError(f"spiffeid: {problem}", reason=problem, value=name)
        return super().__new__(cls, name)

    @property
    def id(self) -> SpiffeID:
        """The trust domain's own SPIFFE ID (``spiffe://example.org``)."""
        return SpiffeID(self, "")


@dataclass(frozen=True, slots=True)
class SpiffeID:
    """A validated SPIFFE ID: constructing one with invalid parts raises InvalidSpiffeIdError.

    Build it from text with :func:`parse_spiffe_id`.
    """

    trust_domain: TrustDomain
    path: str  # "" or "/seg/seg..."
    _text: str = field(init=False, repr=False, compare=False)  # str(self), made once (handlers call it per call)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trust_domain", TrustDomain(self.trust_domain))
        if not isinstance(self.path, str):
            raise InvalidSpiffeIdError(f"spiffeid: a path is a string, not {type(self.path).__name__}")
        problem = _path_problem(self.path)
        if problem is not None:
            raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID path: {problem}", reason=problem, value=self.path)
        if len(SCHEME) + len(self.trust_domain) + len(self.path.encode()) > MAX_ID_BYTES:
            raise InvalidSpiffeIdError(f"spiffeid: a SPIFFE ID is at most {MAX_ID_BYTES} bytes")
        object.__setattr__(self, "_text", f"{SCHEME}{self.trust_domain}{self.path}")

    def __str__(self) -> str:
        return self._text

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain


def parse_trust_domain(value: str) -> TrustDomain:
    """Validate a trust domain name (``example.org`` or ``spiffe://example.org``).

    Returns the bare name. Uppercase is rejected, not lowercased.
    """
    if not isinstance(value, str):
        raise InvalidSpiffeIdError(f"spiffeid: a trust domain is a string, not {type(value).__name__}")
    name = value[len(SCHEME):] if value.startswith(SCHEME) else value
    return TrustDomain(name)


def parse_spiffe_id(value: str) -> SpiffeID:
    """Parse ``value`` as a SPIFFE ID under the full spec, or raise
    :class:`~meshnode.errors.InvalidSpiffeIdError` naming the problem."""
    if not isinstance(value, str):
        raise InvalidSpiffeIdError(f"spiffeid: expected a string, got {type(value).__name__}")
    shown = _shown(value)
    if len(value.encode()) > MAX_ID_BYTES:
        reason = f"longer than {MAX_ID_BYTES} bytes"
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: {reason}", reason=reason, value=value)
    if not value.startswith(SCHEME):
        reason = "must start with 'spiffe://' (lowercase)"
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: {reason}", reason=reason, value=value)
    rest = value[len(SCHEME):]
    slash = rest.find("/")
    name, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    problem = _trust_domain_problem(name) or _path_problem(path)
    if problem is not None:
        raise InvalidSpiffeIdError(f"spiffeid: invalid SPIFFE ID {shown!r}: {problem}", reason=problem, value=value)
    return SpiffeID(TrustDomain(name), path)


class _TooLong(Exception):
    def __init__(self, part: str) -> None:
        super().__init__(part)
        self.part = part


def _encode_label(text: str) -> str:
    if "--" not in text and _PLAIN_LABEL_RE.fullmatch(text):
        label = text
    else:
        label = _ENCODED_PREFIX + base64.b32encode(text.encode()).decode().rstrip("=").lower()
    if len(label) > _MAX_LABEL:
        raise _TooLong(text)
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
    except _TooLong as exc:
        raise InvalidSpiffeIdError(
            f"spiffeid: {sid} has no DNS name: its part {exc.part[:40]!r} is too long for a "
            "DNS label; use verify = \"spiffe-id\" for this peer, or set server_name",
            reason=f"its part {exc.part[:40]!r} is too long for a DNS label", spiffe_id=str(sid),
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
