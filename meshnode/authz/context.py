"""``peer_id()``: the verified caller of the RPC being handled; ``peer_mtls_id()`` and ``peer_jwt()``: both identities.

``peer_id()`` is the *principal*: the mTLS identity, or with ``[authz]
principal = "jwt"`` the subject of the call's JWT-SVID. ``peer_mtls_id()``
is always the mTLS peer (a proxy, when one carries another workload's
token); ``peer_jwt()`` is the call's validated JWT-SVID, or None.

The authorizing wrappers set it right before the handler runs:

* async handlers run in the RPC's own asyncio task, which has its own copy
  of the context, so the value never leaks into other calls;
* sync handlers run on grpc.aio's thread pool, whose threads do *not*
  inherit the event loop's context: the wrapper sets the value inside the
  worker thread and resets it when the handler returns (for a streaming
  handler, around every step of its generator, since steps may run on
  different threads).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from meshnode.errors import NoPeerIdentityError
from meshnode.jwtsvid.token import JwtSvid
from meshnode.spiffeid import SpiffeID

__all__ = ["Caller", "NoPeerIdentityError", "peer_id", "peer_jwt", "peer_mtls_id"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Both identities of an authorized call: the principal, the mTLS peer and the JWT-SVID (if any)."""

    principal: SpiffeID
    mtls: SpiffeID
    jwt: JwtSvid | None = None


#: the admitted call's identities: one context variable, set once per call (each ``set`` costs)
CURRENT_CALLER: ContextVar[Caller | None] = ContextVar("meshnode_authz_caller", default=None)


def peer_id() -> SpiffeID:
    """The SPIFFE ID of the caller of the current, authorized RPC.

    Works in async and sync handlers (and in a sync streaming handler's
    generator). Raises :class:`NoPeerIdentityError` anywhere else.
    """
    caller = CURRENT_CALLER.get()
    if caller is None:
        raise NoPeerIdentityError(
            "authz: peer_id() is only available while handling an RPC authorized by meshnode.authz "
            "(a handler wrapped by Authorizer.wrap_handler or behind Authorizer.interceptor()); "
            "outside a call there is no caller"
        )
    return caller.principal


def _caller(what: str) -> Caller:
    caller = CURRENT_CALLER.get()
    if caller is None:
        raise NoPeerIdentityError(
            f"authz: {what}() is only available while handling an RPC authorized by meshnode.authz; "
            "outside a call there is no caller"
        )
    return caller


def peer_mtls_id() -> SpiffeID:
    """The SPIFFE ID of the mTLS peer of the current, authorized RPC (a proxy, when one forwarded the call).

    Raises :class:`NoPeerIdentityError` outside an authorized call.
    """
    return _caller("peer_mtls_id").mtls


def peer_jwt() -> JwtSvid | None:
    """The validated JWT-SVID of the current, authorized RPC (subject, audience, expiry, claims), or None.

    None when the call carried no token (``[authz] jwt = "optional"`` or
    ``"off"``). Raises :class:`NoPeerIdentityError` outside an authorized call.
    """
    return _caller("peer_jwt").jwt
