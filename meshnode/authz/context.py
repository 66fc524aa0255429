"""``peer_id()``: the verified caller of the RPC being handled.

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

from meshnode.errors import NoPeerIdentityError
from meshnode.spiffeid import SpiffeID

__all__ = ["NoPeerIdentityError", "peer_id"]

CURRENT_PEER: ContextVar[SpiffeID | None] = ContextVar("meshnode_authz_peer", default=None)


def peer_id() -> SpiffeID:
    """The SPIFFE ID of the caller of the current, authorized RPC.

    Works in async and sync handlers (and in a sync streaming handler's
    generator). Raises :class:`NoPeerIdentityError` anywhere else.
    """
    peer = CURRENT_PEER.get()
    if peer is None:
        raise NoPeerIdentityError(
            "authz: peer_id() is only available while handling an RPC authorized by meshnode.authz "
            "(a handler wrapped by Authorizer.wrap_handler or behind Authorizer.interceptor()); "
            "outside a call there is no caller"
        )
    return peer
