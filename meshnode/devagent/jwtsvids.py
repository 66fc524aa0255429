"""JWT-SVIDs from an in-process dev CA: what the ``dev`` identity source gives a node's JWT side.

:class:`DevJwt` signs JWT-SVIDs for the node's SPIFFE ID with the
:class:`~meshnode.devagent.ca.DevCA` of its dev source (a token fetcher for
:mod:`meshnode.jwtsvid.tokens`), and publishes the CA's JWT bundle (a bundle
source for :class:`~meshnode.jwtsvid.validate.JwtValidator`), following the
CA's key rotation. Development only, like the dev source.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from meshnode.devagent.ca import DevCA
from meshnode.errors import JwtSvidError, MeshnodeError
from meshnode.jwtsvid.bundle import JwtBundle, JwtBundleSet
from meshnode.spiffeid import SpiffeID

__all__ = ["DEV_JWT_TTL", "DevJwt"]

#: How long the dev CA's JWT-SVIDs live (SPIRE's default is 5 minutes).
DEV_JWT_TTL = dt.timedelta(minutes=5)


class DevJwt:
    """JWT-SVIDs for ``subject()`` signed by ``ca``, and ``ca``'s JWT bundle."""

    def __init__(self, ca: DevCA, subject: Callable[[], SpiffeID], *, ttl: dt.timedelta = DEV_JWT_TTL) -> None:
        self.ca = ca
        self.description = f"the dev CA of {ca.trust_domain} (in-process)"
        self._subject = subject
        self._ttl = ttl
        self._lock = threading.Lock()
        self._set = JwtBundleSet({})
        self._version = -1

    def fetch(self, audience: str) -> str:
        """A JWT-SVID for ``audience``; raises JwtSvidError."""
        try:
            return self.ca.sign_jwt(self._subject(), [audience], self._ttl)
        except MeshnodeError as exc:
            reason = f"{self.description} cannot sign a JWT-SVID for audience {audience!r}: {exc}"
            raise JwtSvidError(f"jwt: {reason}", reason=reason) from None

    def current(self) -> JwtBundleSet:
        """The CA's JWT bundle; a new set only when the CA's JWT keys changed."""
        version = self.ca.jwt_version
        if version == self._version:
            return self._set
        with self._lock:
            if version != self._version:
                keys = self.ca.jwt_public_keys()
                bundle = JwtBundle(self.ca.trust_domain, dict(keys))
                self._set = JwtBundleSet({self.ca.trust_domain: bundle}, self._set.generation + 1)
                self._version = version
            return self._set

    def close(self) -> None:
        """Nothing to release (the CA belongs to the identity source)."""
