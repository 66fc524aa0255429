"""JWT-SVID tokens: the JOSE header and claim rules of the SPIFFE JWT-SVID spec, and the validated result.

What a JWT-SVID may be (SPIFFE JWT-SVID sections 2-4, Appendix A):

* JWS Compact Serialization, three base64url parts;
* header: ``alg`` one of :data:`ALGORITHMS` (RFC 7518 3.3-3.5: RS*, ES*, PS*),
  so ``none`` and every HMAC algorithm are refused; ``typ``, when present,
  ``JWT`` or ``JOSE``; ``kid`` names the signing key in the bundle of the
  issuer's trust domain (meshnode requires it, as go-spiffe does: without it
  no key can be chosen); no other header (section 2: any header not
  described there MUST NOT be included, so ``crit``, ``jku``, ``jwk``,
  ``x5u``, ``x5c``, ``b64`` are refused rather than half understood);
* claims: ``sub`` a valid SPIFFE ID; ``aud`` a string or a non-empty list
  of strings; ``exp`` a number. ``nbf`` and ``iat``, when present, are
  numbers and not in the future (with the clock skew allowed).

Parsing here is strict JSON (no repeated member names, no ``NaN``), and a
token longer than :data:`MAX_TOKEN_CHARS` is refused before any parsing.
Nothing in this module ever puts a token into a message.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshnode.errors import InvalidSpiffeIdError, JwtSvidError
from meshnode.spiffeid import SpiffeID, parse_spiffe_id

__all__ = [
    "ALGORITHMS",
    "MAX_TOKEN_CHARS",
    "Header",
    "JwtSvid",
    "Token",
    "check_claims",
    "check_header",
    "shown",
    "split_token",
    "subject_of",
]

#: The ``alg`` values the JWT-SVID spec allows (section 2.1); every other value is refused.
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
#: The ``typ`` values the spec allows (section 2.3).
TYPES = frozenset({"JWT", "JOSE"})
#: The only header parameters a JWT-SVID may carry.
HEADERS = frozenset({"alg", "kid", "typ"})
#: Longer tokens are refused unread (SPIRE's are under 1,000 characters).
MAX_TOKEN_CHARS = 8192
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _fail(reason: str) -> JwtSvidError:
    return JwtSvidError(f"jwt: the JWT-SVID is not valid: {reason}", reason=reason)


def _b64(part: str, what: str) -> bytes:
    if not set(part) <= _B64URL:
        raise _fail(f"its {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _fail(f"its {what} is not base64url") from None


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError("a member name appears twice")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, ValueError):
        raise _fail(f"its {what} is not a JSON object") from None
    if not isinstance(value, dict):
        raise _fail(f"its {what} is not a JSON object")
    return value


def split_token(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, claims) of a compact JWS, unverified; raises JwtSvidError."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _fail(f"it is longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise _fail("it is not a JWS in compact serialization (three base64url parts)")
    if not parts[2]:
        raise _fail("it is not signed (an empty signature: alg 'none' is never accepted)")
    return _json_object(_b64(parts[0], "header"), "header"), _json_object(_b64(parts[1], "payload"), "payload")


@dataclass(frozen=True, slots=True)
class Header:
    alg: str
    kid: str


def shown(value: object, limit: int = 40) -> str:
    """A value taken from a token, for a message: quoted, printable, at most ``limit`` characters (it is
    outside input; a message goes to the caller, the audit log and spans)."""
    text = json.dumps(value) if isinstance(value, str) else type(value).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_header(header: Mapping[str, Any]) -> Header:
    """The ``alg`` and ``kid`` of a JWT-SVID header that follows the spec; raises JwtSvidError."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        allowed = ", ".join(sorted(ALGORITHMS))
        raise _fail(f"alg {shown(alg)} is not allowed for JWT-SVIDs (allowed: {allowed})")
    extra = sorted(set(header) - HEADERS)
    if extra:
        raise _fail(f"its header has {', '.join(shown(e) for e in extra[:4])}; a JWT-SVID header holds only "
                    "alg, kid and typ")
    typ = header.get("typ")
    if typ is not None and typ not in TYPES:
        raise _fail(f"typ {shown(typ)} is not JWT or JOSE")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _fail("its header has no kid (the key id that selects the signing key in the bundle)")
    return Header(alg, kid)


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(f"claim {name} is not a number")
    return float(value)


def _time(seconds: float) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return dt.datetime.max.replace(tzinfo=dt.UTC) if seconds > 0 else dt.datetime.min.replace(tzinfo=dt.UTC)


def _audience(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        raise _fail("it has no aud claim (a JWT-SVID names its audience)")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise _fail("claim aud is not a non-empty string or list of non-empty strings")
    return tuple(values)


def subject_of(claims: Mapping[str, Any]) -> SpiffeID:
    """The ``sub`` claim as a SPIFFE ID; raises JwtSvidError."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _fail("it has no sub claim (the SPIFFE ID of the workload)")
    try:
        return parse_spiffe_id(sub)
    except InvalidSpiffeIdError as exc:
        raise _fail(f"sub {shown(sub)} is not a SPIFFE ID ({exc.reason})") from None


def check_claims(claims: Mapping[str, Any], *, now: float, leeway: float) -> tuple[SpiffeID, tuple[str, ...], float]:
    """(subject, audience, exp) of claims that follow the spec at ``now`` (epoch seconds); raises JwtSvidError.

    The audience is returned for the caller to match: what the validator
    accepts is its own business.
    """
    subject = subject_of(claims)
    audience = _audience(claims)
    exp = _number(claims, "exp")
    if exp is None:
        raise _fail("it has no exp claim (a JWT-SVID must expire)")
    if now >= exp + leeway:
        raise _fail(f"it expired at {_time(exp).isoformat()}")
    for name in ("nbf", "iat"):
        at = _number(claims, name)
        if at is not None and at > now + leeway:
            when = "is not valid before" if name == "nbf" else "was issued in the future, at"
            raise _fail(f"it {when} {_time(at).isoformat()} (claim {name})")
    return subject, audience, exp


def _frozen(value: Any) -> Any:
    """JSON values made read-only: objects become mappings, arrays tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True, eq=False)
class JwtSvid:
    """A validated JWT-SVID, as a handler sees it (:func:`meshnode.peer_jwt`); never the token itself.

    ``audience``: every value of its ``aud`` claim; ``claims``: the whole
    payload (read-only); ``key_id``: the bundle key that signed it.
    """

    subject: SpiffeID
    audience: tuple[str, ...]
    expiry: dt.datetime
    claims: Mapping[str, Any] = field(repr=False)
    key_id: str = ""
    issued_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        # one object serves every call carrying the token: nested values are frozen too
        object.__setattr__(self, "claims", _frozen(dict(self.claims)))

    @property
    def trust_domain(self) -> str:
        return self.subject.trust_domain


@dataclass(frozen=True, eq=False)
class Token:
    """A JWT-SVID this workload holds to send: the token (never in ``repr``) and what it says of itself.

    Read without verifying (the issuer verifies its own tokens; the receiver
    verifies them again): to know when it expires and when to renew it.
    """

    value: str = field(repr=False)
    subject: SpiffeID
    audience: tuple[str, ...]
    expiry: float  # epoch seconds
    issued_at: float  # epoch seconds: its iat, or when it arrived when it has none (or a later one)
    received: float = 0.0  # epoch seconds, by this workload's clock

    @classmethod
    def read(cls, value: str, *, received: float, leeway: float = 0.0) -> Token:
        """A token just obtained, read unverified: shape, header and claims follow the spec; raises JwtSvidError."""
        value = value.strip()
        header, claims = split_token(value)
        check_header(header)
        subject, audience, exp = check_claims(claims, now=received, leeway=leeway)
        iat = _number(claims, "iat")
        issued = min(iat, received) if iat is not None else received
        return cls(value, subject, audience, exp, issued, received)

    def refresh_at(self) -> float:
        """When to renew it (epoch seconds): at half its life, but not within a second of its arrival.

        The floor keeps a clock ahead of the issuer's (``iat`` far in the past)
        from turning renewals into a loop of fetches.
        """
        half = self.issued_at + (self.expiry - self.issued_at) / 2
        return max(half, self.received + min(1.0, (self.expiry - self.received) / 2))

    def expired(self, now: float) -> bool:
        return now >= self.expiry
