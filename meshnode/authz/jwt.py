"""The JWT step of authorization: the caller's JWT-SVID, and who the principal is.

A call may carry ``authorization: Bearer <JWT-SVID>`` (JWT-SVID spec 5.3).
With :class:`JwtAuthn` given to the :class:`~meshnode.authz.Authorizer`:

* ``mode = "optional"``: a Bearer token, when present, must be valid; a call
  without one (or with another authorization scheme) is authorized by its
  mTLS identity alone;
* ``mode = "required"``: every call must carry a valid one;
* a token that is present and fails validation, or a missing one when
  required, ends the call with UNAUTHENTICATED and the reason (never the
  token), also in dry-run mode;
* ``principal = "mtls"``: the policy, ``allow``/``@only`` and ``peer_id()``
  use the mTLS identity; the token is validated and shown
  (:func:`~meshnode.authz.peer_jwt`, audit, spans) but does not name the caller;
* ``principal = "jwt"``: they use the token's ``sub``. The mTLS peer must
  still be authenticated, and when its ID differs from ``sub`` it must be
  one of ``forwarders`` (the proxies allowed to carry another workload's
  token), else PERMISSION_DENIED naming both IDs - enforced in dry-run
  mode too, as it decides who the caller is, not what the caller may do.

Two ``authorization`` entries on one call are refused (which one would a
proxy have checked?).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from meshnode.jwtsvid.token import JwtSvid
from meshnode.jwtsvid.validate import JwtRejection, JwtValidator
from meshnode.spiffeid import SpiffeID

__all__ = ["NOT_BEARER", "JwtAuthn", "bearer_token"]

#: a call whose authorization metadata is not a Bearer token (absent in optional mode, refused when required)
NOT_BEARER = JwtRejection("the authorization metadata is not 'Bearer <JWT-SVID>'")
_TWO = JwtRejection("the call carries more than one authorization metadata entry")
_BINARY = JwtRejection("the authorization metadata is not text")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | JwtRejection | None:
    """The token of the call's ``authorization: Bearer <token>``; None without one; a rejection when malformed."""
    found: Any = None
    for key, value in metadata or ():
        if key == "authorization":
            if found is not None:
                return _TWO
            found = value
    if found is None:
        return None
    if not isinstance(found, str):
        return _BINARY
    if found[:7].lower() != "bearer ":
        return NOT_BEARER
    return found[7:].strip()


@dataclass(frozen=True)
class JwtAuthn:
    """How the authorizer treats JWT-SVIDs: ``[authz] jwt``, ``principal`` and ``jwt_forwarders``."""

    validator: JwtValidator
    mode: Literal["optional", "required"] = "required"
    principal: Literal["mtls", "jwt"] = "mtls"
    forwarders: frozenset[SpiffeID] = frozenset()

    def __post_init__(self) -> None:
        if self.principal == "jwt" and self.mode != "required":
            raise ValueError('authz: principal = "jwt" needs mode = "required"')
        object.__setattr__(self, "forwarders", frozenset(self.forwarders))

    def token(self, metadata: Iterable[tuple[str, Any]] | None) -> JwtSvid | JwtRejection | None:
        """The call's validated token, why it is refused, or None (no token, and that is allowed)."""
        found = bearer_token(metadata)
        if isinstance(found, str):
            return self.validator.check(found)
        if found is None or (found is NOT_BEARER and self.mode == "optional"):
            return _MISSING if self.mode == "required" else None
        return found


_MISSING = JwtRejection("the call carries no JWT-SVID ('authorization: Bearer <JWT-SVID>'), which this server requires")
