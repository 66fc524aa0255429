"""Validating JWT-SVIDs a server receives, with a cache that never re-verifies a signature per call.

:meth:`JwtValidator.validate` does every check of the JWT-SVID spec
(:mod:`meshnode.jwtsvid.token`), in this order, and raises
:class:`~meshnode.errors.JwtSvidError` with the first that fails:

1. shape and header: compact JWS, ``alg`` allowed (never ``none`` or HMAC),
   ``typ``, ``kid``, no other header;
2. ``sub`` a SPIFFE ID in a trust domain this node accepts;
3. the key: ``kid`` in the JWT bundle of the trust domain of ``sub`` (the
   issuer's trust domain: a key of trust domain A never vouches for a token
   of B), of the type ``alg`` needs (an RSA key never verifies an ``ES256``
   token, a P-384 key never an ``ES256`` one);
4. the signature, by PyJWT with exactly that one algorithm;
5. ``exp`` (30 s of clock skew allowed), ``nbf`` and ``iat`` not in the
   future, ``aud`` holding one of the accepted audiences.

:meth:`JwtValidator.check` is the per-call entry: results are cached under
the exact token string (the full ``authorization`` value as received), so a
token already verified costs a dict lookup, one clock read and one identity
comparison. An entry is used only while

* the bundle set it was checked against is still the current one (a key
  removed or rotated out re-verifies every cached token: one signature per
  token, once), and
* the token has not expired (an accepted token is dropped at ``exp`` +
  skew; a refused one stays refused).

A refusal that depends on the clock (``nbf``/``iat`` in the future) is not
cached. The cache is a dict cleared when it holds ``cache_size`` entries.
Messages never hold the token.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshnode.errors import JwtSvidError
from meshnode.jwtsvid.bundle import JwtBundleSet, PublicKey
from meshnode.jwtsvid.token import JwtSvid, check_claims, check_header, shown, split_token, subject_of

__all__ = ["LEEWAY", "JwtBundleSource", "JwtRejection", "JwtValidator"]

#: Seconds of clock skew allowed on exp, nbf and iat.
LEEWAY = 30.0
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class JwtBundleSource(Protocol):
    """Where the JWT bundles come from; :meth:`current` is cheap (called on every call)."""

    @property
    def description(self) -> str: ...

    def current(self) -> JwtBundleSet: ...


@dataclass(frozen=True, slots=True)
class JwtRejection:
    """A token that was refused, and why (never the token)."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Entry:
    result: JwtSvid | JwtRejection
    bundles: JwtBundleSet
    until: float  # epoch seconds after which the entry is not used


def _fail(reason: str) -> JwtSvidError:
    return JwtSvidError(f"jwt: the JWT-SVID is not valid: {reason}", reason=reason)


def _check_key(alg: str, key: PublicKey, kid: str) -> None:
    if alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES[alg]):
            raise _fail(f"the key {shown(kid)} is not a {_CURVES[alg].name} EC key, as alg {alg} needs")
    elif not isinstance(key, rsa.RSAPublicKey):
        raise _fail(f"the key {shown(kid)} is not an RSA key, as alg {alg} needs")


class JwtValidator:
    """Validates JWT-SVIDs against ``bundles`` for ``audiences`` from ``trust_domains``.

    ``audiences``: a token must name at least one of them in ``aud``.
    ``trust_domains``: the trust domains whose subjects are accepted (the
    node's own and those it federates with). ``clock``: epoch seconds.
    """

    def __init__(
        self,
        bundles: JwtBundleSource,
        *,
        audiences: Iterable[str],
        trust_domains: Iterable[str],
        leeway: float = LEEWAY,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundles = bundles
        self.audiences = frozenset(audiences)
        self.trust_domains = frozenset(trust_domains)
        if not self.audiences:
            raise JwtSvidError("jwt: a validator needs at least one audience to accept")
        self._leeway = leeway
        self._limit = max(cache_size, 16)
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._jws = jwt.PyJWS()
        #: how many signatures were verified (cache misses that got that far): the cost the cache saves
        self.verified = 0

    # -- the per-call entry ---------------------------------------------------

    def check(self, token: str, cache_key: str | None = None) -> JwtSvid | JwtRejection:
        """The validated token, or why it is refused; cached under ``cache_key`` (default: the token)."""
        key = token if cache_key is None else cache_key
        bundles = self.bundles.current()
        entry = self._cache.get(key)
        if entry is not None and entry.bundles is bundles and self._clock() < entry.until:
            return entry.result
        now = self._clock()
        result: JwtSvid | JwtRejection
        try:
            result = self.validate(token, bundles=bundles, now=now)
            until = result.expiry.timestamp() + self._leeway
        except JwtSvidError as exc:
            result = JwtRejection(exc.reason)
            if "not valid before" in exc.reason or "issued in the future" in exc.reason:
                return result  # depends on the clock: decided again next time
            until = math.inf
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[key] = _Entry(result, bundles, until)
        return result

    # -- the checks -----------------------------------------------------------

    def validate(self, token: str, *, bundles: JwtBundleSet | None = None, now: float | None = None) -> JwtSvid:
        """Every check, no cache; raises JwtSvidError naming the first that fails."""
        bundles = self.bundles.current() if bundles is None else bundles
        now = self._clock() if now is None else now
        header, claims = split_token(token)
        alg, kid = (h := check_header(header)).alg, h.kid
        subject = subject_of(claims)  # the issuer's trust domain picks the bundle: before anything is verified
        td = subject.trust_domain
        if td not in self.trust_domains:
            raise _fail(f"its subject {subject} is in trust domain '{td}', which this server does not accept")
        bundle = bundles.bundles.get(td)
        if bundle is None:
            raise _fail(f"there is no JWT bundle for trust domain '{td}' (the trust domain of its subject)")
        key = bundle.keys.get(kid)
        if key is None:
            raise _fail(f"its key id {shown(kid)} is not in the JWT bundle of '{td}' (an unknown or retired key)")
        _check_key(alg, key, kid)
        self.verified += 1
        try:
            self._jws.decode_complete(token, key=key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise _fail(f"its signature does not verify with key {shown(kid)} of '{td}'") from None
        except Exception as exc:  # PyJWT may raise TypeError/ValueError for odd input: still a refusal
            raise _fail(f"its signature cannot be checked ({type(exc).__name__})") from None
        subject, audience, exp = check_claims(claims, now=now, leeway=self._leeway)
        if not self.audiences.intersection(audience):
            accepted = ", ".join(sorted(self.audiences)[:4])
            named = ", ".join(shown(a) for a in audience[:4]) + (", ..." if len(audience) > 4 else "")
            raise _fail(f"its audience [{named}] names none of this server's audiences ({accepted})")
        iat = claims.get("iat")
        issued = (dt.datetime.fromtimestamp(iat, dt.UTC)
                  if isinstance(iat, (int, float)) and not isinstance(iat, bool) and abs(iat) < 1e11 else None)
        expiry = dt.datetime.fromtimestamp(min(exp, 1e11), dt.UTC)
        return JwtSvid(subject, audience, expiry, claims, kid, issued)
