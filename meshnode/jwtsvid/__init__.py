"""JWT-SVIDs: tokens a node sends on calls, and the validation of tokens it receives.

The SPIFFE JWT-SVID spec, as meshnode applies it (see :mod:`meshnode.jwtsvid.token`
and :mod:`meshnode.jwtsvid.validate` for every rule)::

    client: PeerTokens (one TokenSlot per audience, renewed at half-life) -> each call on a
            jwt = true peer carries "authorization: Bearer <JWT-SVID>" (meshnode.channel)
    server: Authorizer.check -> JwtValidator.check(token) (cached by the exact token) against
            the JWT bundle of the trust domain of its sub (Workload API, dev CA, jwt_bundles_dir)

Thread model: a token fetch (Workload API, dev CA, file) runs only on the
token thread or at start; bundles stream in on their source's thread; the
per-call work (a slot's metadata pair, a validator cache hit) is a few
attribute reads on the event loop. Nothing here logs a token.
"""

from meshnode.jwtsvid.bundle import JwtBundle, JwtBundleSet, parse_jwks, parse_spiffe_jwt_bundle
from meshnode.jwtsvid.sources import JwtBundleDir, MergedJwtBundles, StaticJwtBundles
from meshnode.jwtsvid.token import ALGORITHMS, JwtSvid, Token
from meshnode.jwtsvid.tokens import PeerTokens, TokenFetcher, TokenFile, TokenSlot
from meshnode.jwtsvid.validate import LEEWAY, JwtBundleSource, JwtRejection, JwtValidator
from meshnode.jwtsvid.workload_api import WorkloadApiJwtBundles, WorkloadApiTokens

__all__ = [
    "ALGORITHMS",
    "LEEWAY",
    "JwtBundle",
    "JwtBundleDir",
    "JwtBundleSet",
    "JwtBundleSource",
    "JwtRejection",
    "JwtSvid",
    "JwtValidator",
    "MergedJwtBundles",
    "PeerTokens",
    "StaticJwtBundles",
    "Token",
    "TokenFetcher",
    "TokenFile",
    "TokenSlot",
    "WorkloadApiJwtBundles",
    "WorkloadApiTokens",
    "parse_jwks",
    "parse_spiffe_jwt_bundle",
]
