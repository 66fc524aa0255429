"""The node's JWT-SVIDs: the tokens it sends to ``jwt = true`` peers, and how it validates those it receives.

Built by the boot plan (:func:`meshnode.boot.boot`) from the configuration
and the identity source it opened, so ``meshnode check`` reports the same
checks ``meshnode run`` enforces. Where tokens and JWT bundles come from
follows the identity source (the one it wraps, under the guard and the
federated bundles):

================ ============================================ ==========================================
source           tokens sent (``[peers.NAME] jwt = true``)    JWT bundles (``[authz] jwt``)
================ ============================================ ==========================================
workload-api     ``FetchJWTSVID`` for the node's SPIFFE ID     the ``FetchJWTBundles`` stream
dev              signed by the dev CA of the source            the dev CA's JWT keys
files            ``[peers.NAME] jwt_token_file`` only          ``[identity] jwt_bundles_dir`` only
================ ============================================ ==========================================

``jwt_token_file`` overrides the source for its peer with every source;
``jwt_bundles_dir`` adds to the source's bundles with every source (its
keys lose to the source's on a key id both have).

Checks (``required = "production"``): the JWT bundles arrived in time, and
a first token for every ``jwt = true`` peer was obtained. In development
and staging a failure is logged and calls fail with UNAUTHENTICATED (naming
the reason) until the token or bundle arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshnode.authz.jwt import JwtAuthn
from meshnode.channel import CallAuth
from meshnode.config.node import NodeConfig
from meshnode.devagent.ca import DevCA
from meshnode.devagent.jwtsvids import DevJwt
from meshnode.errors import ConfigError, IdentityError, JwtSvidError
from meshnode.identity.source import IdentitySource
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.jwtsvid.sources import JwtBundleDir, MergedJwtBundles
from meshnode.jwtsvid.tokens import PeerTokens, TokenFetcher, TokenFile
from meshnode.jwtsvid.validate import JwtBundleSource, JwtValidator
from meshnode.jwtsvid.workload_api import WorkloadApiJwtBundles, WorkloadApiTokens
from meshnode.preflight import Check

__all__ = ["NodeJwt", "node_jwt"]

log = logging.getLogger("meshnode.jwt")


@dataclass
class NodeJwt:
    """What the node uses JWT-SVIDs with; :meth:`close` stops the token thread and the bundle sources."""

    tokens: PeerTokens | None = None
    call_auth: dict[str, CallAuth] = field(default_factory=dict)  # by peer name
    authn: JwtAuthn | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()


def _base(source: IdentitySource) -> Any:
    """The source under the guard and the federated-bundles wrapper: where identities really come from."""
    found: Any = source
    for _ in range(8):
        inner = getattr(found, "inner", None)
        if inner is None:
            break
        found = inner
    return found


def _issuer(source: IdentitySource, on_error: Callable[[str], None] | None) -> tuple[Any, Any]:
    """(token fetcher, bundle source factory) of the identity source; (None, None) when it has none."""
    base = _base(source)

    def subject() -> Any:
        return source.current().spiffe_id

    if isinstance(base, WorkloadApiSource):
        return WorkloadApiTokens(base.address, subject), lambda: WorkloadApiJwtBundles(base.address, on_error=on_error)
    ca = getattr(base, "ca", None)
    if isinstance(ca, DevCA):  # the dev source (and meshnode.testing.ManualSource) sign with a dev CA
        dev = DevJwt(ca, subject)
        return dev, lambda: dev
    return None, None


def node_jwt(
    config: NodeConfig,
    source: IdentitySource,
    accepted: frozenset[str],
    *,
    serves: bool,
    on_error: Callable[[str], None] | None = None,
) -> tuple[NodeJwt, list[Check]]:
    """Open the JWT side of a node: token slots for ``jwt = true`` peers (first tokens fetched now,
    blocking) and, when ``serves`` and ``[authz] jwt`` is on, the validator. Never raises for a check."""
    result = NodeJwt()
    checks: list[Check] = []
    try:
        fetcher, bundles = _issuer(source, on_error)
        if fetcher is not None and hasattr(fetcher, "close"):
            result._closers.append(fetcher.close)
        _client(config, result, fetcher, checks, on_error)
        if serves and config.authz.jwt != "off":
            _server(config, source, accepted, result, bundles, checks, on_error)
    except BaseException:
        result.close()
        raise
    return result, checks


def _client(
    config: NodeConfig, result: NodeJwt, fetcher: TokenFetcher | None, checks: list[Check],
    on_error: Callable[[str], None] | None,
) -> None:
    peers = [p for p in config.peers.values() if p.jwt]
    if not peers:
        return
    tokens = result.tokens = PeerTokens(on_error=on_error)
    result._closers.append(tokens.close)
    for peer in peers:
        chosen: TokenFetcher | None = TokenFile(peer.jwt_token_file) if peer.jwt_token_file is not None else fetcher
        if chosen is None:
            message = (f"jwt: [peers.{peer.name}] jwt = true: the identity source ({config.identity.source}) cannot "
                       f"give JWT-SVIDs; set [peers.{peer.name}] jwt_token_file")
            checks.append(Check(f"JWT-SVID source for peer {peer.name}", False, message, "set jwt_token_file",
                                ConfigError, "always", message=message))
            continue
        result.call_auth[peer.name] = tokens.slot(peer.audience, chosen)
    problems = tokens.start()  # each problem is logged once by its slot
    checks.append(Check(
        "JWT-SVIDs for jwt = true peers obtained", not problems,
        "; ".join(problems) or ", ".join(sorted({p.audience for p in peers})),
        "make the agent issue JWT-SVIDs to this workload, or fix [peers.NAME] jwt_token_file", JwtSvidError,
    ))


def _server(
    config: NodeConfig, source: IdentitySource, accepted: frozenset[str], result: NodeJwt, bundles: Any,
    checks: list[Check], on_error: Callable[[str], None] | None,
) -> None:
    authz, idc = config.authz, config.identity
    sources: list[JwtBundleSource] = []
    waiting: WorkloadApiJwtBundles | None = None
    if bundles is not None:
        opened = bundles()
        result._closers.append(opened.close)
        sources.append(opened)
        if isinstance(opened, WorkloadApiJwtBundles):
            waiting = opened
    if idc.jwt_bundles_dir is not None:
        directory = JwtBundleDir(idc.jwt_bundles_dir, source.current().trust_domain, on_error=on_error)
        result._closers.append(directory.close)
        sources.append(directory)
    if not sources:
        message = (f"jwt: [authz] jwt = {authz.jwt!r} needs JWT bundles, and the identity source "
                   f"({idc.source}) gives none: set [identity] jwt_bundles_dir")
        checks.append(Check("JWT bundles available", False, message, "set [identity] jwt_bundles_dir", ConfigError,
                            "always", message=message))
        return
    merged = sources[0] if len(sources) == 1 else MergedJwtBundles(sources)  # one source: nothing to merge per call
    own = str(source.current().spiffe_id)
    validator = JwtValidator(merged, audiences=(own, *authz.jwt_audiences), trust_domains=accepted)
    result.authn = JwtAuthn(validator, "required" if authz.jwt == "required" else "optional", authz.principal,
                            frozenset(authz.jwt_forwarders))
    arrived = waiting.wait_first(idc.timeout) if waiting is not None else True
    have = sorted(merged.current().bundles)
    detail = f"{merged.description}: " + (", ".join(have) if have else "no trust domain yet")
    if not arrived and waiting is not None:
        detail = f"{merged.description}: nothing within {idc.timeout:g} s ({waiting.problem})"
    checks.append(Check(
        "JWT bundles obtained", arrived and bool(have), detail,
        "make the agent serve FetchJWTBundles to this workload, or set [identity] jwt_bundles_dir", IdentityError,
    ))
