"""The decision core: who is calling, may they call this method, and what to record.

Every authorized call goes through :meth:`Authorizer.check`, from the
interceptor or from a handler wrapped at registration.

Outcomes
--------
* no usable SPIFFE identity (no certificate, zero or several URI SANs, an
  invalid ID, a CA leaf, a trust domain the node does not accept, a chain
  that does not verify against its own trust domain's bundle) ->
  UNAUTHENTICATED, enforced even in dry-run mode, so a handler can always
  rely on :func:`~meshnode.authz.peer_id`;
* the policy denies -> PERMISSION_DENIED naming the method and the caller,
  never the policy; in dry-run mode the call runs and is recorded as a deny;
* allowed -> the handler runs.

With a :class:`~meshnode.authz.jwt.JwtAuthn` (``[authz] jwt``), the
call's JWT-SVID is checked right after the mTLS identity: a token that is
present and invalid, or missing when required, is UNAUTHENTICATED with the
reason; with ``principal = "jwt"`` the token's subject is the caller the
policy decides on, and an mTLS peer other than the subject must be a
listed forwarder (else PERMISSION_DENIED naming both). Verdicts then also
key on the validated token (the validator's cached object for it, or the
refusal), so a cache hit still costs no signature check (see
:mod:`meshnode.jwtsvid.validate`); spans and audit records carry both
identities (``meshnode.peer.mtls_spiffe_id``, ``meshnode.peer.jwt_subject``).

Cost, and why the cache is sound
--------------------------------
Reading ``auth_context()`` costs ~9 us and a bare RPC ~300 us of server CPU.
Decisions are cached as :class:`Verdict` values (status, message, span and
metric attributes, precomputed) under ``(identity key, method, policy
version)``. The identity key is exactly what was checked, never a
projection of it:

* one trust domain accepted (or no :class:`TrustInfo`): the caller's leaf
  certificate (its PEM from ``auth_context()``). gRPC verified the chain at
  the handshake; every X509-SVID rule (one URI SAN, a valid ID, not a CA, no
  URI-shaped DNS SAN) is a function of the leaf alone, so a verdict for one
  leaf is valid for every call that presents the same leaf, and for no other.
  (``peer_identities()`` would be cheaper, but it is a flat list of SAN
  strings without their types: a CN or a DNS SAN spelled like a SPIFFE ID
  gives the same list as a real SVID's URI SAN.)
* several trust domains: the leaf, the intermediates the caller sent and the
  trust bundle generation, because there the chain is re-verified against
  the caller's own trust domain's bundle; a new bundle generation
  re-verifies.

Versions only grow, so an entry of an older policy version is never read
again; each cache is a dict cleared when it reaches ``cache_size`` (no LRU
bookkeeping on the hot path; the working set is callers x methods, small).

Header conditions (A43) cost only where they apply: a miss asks the policy
for :meth:`~meshnode.authz.Policy.resolve` (caller, method), which walks
every rule once and leaves only the header rules whose peers and methods
match. With none, the cached verdict is final. With some, the entry holds
that short residual and one prepared verdict per possible outcome; each
call then reads its metadata and tests those few rules' headers, nothing
else. So one header rule no longer makes every call walk every rule.

A cache hit then costs the ``auth_context()`` read, a dict lookup, one span
``set_attributes`` (free when no span is recording), one tally increment
(:mod:`meshnode.authz.counting`) and, when the audit condition asks for it,
one JSON log record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from meshnode.authz.audit import AuditCondition, Auditor
from meshnode.authz.context import CURRENT_CALLER, Caller
from meshnode.authz.counting import DecisionCounter, Slot
from meshnode.authz.identity import PeerIdentity, TrustInfo, TrustSnapshot, resolve_peer
from meshnode.authz.jwt import JwtAuthn
from meshnode.authz.policy import Decision, Explanation, Policy, Request, Residual
from meshnode.authz.source import ActivePolicy, PolicySource, StaticPolicy
from meshnode.errors import PolicyError
from meshnode.jwtsvid.token import JwtSvid
from meshnode.jwtsvid.validate import JwtRejection
from meshnode.pipeline import AuthzInterceptor, Pipeline
from meshnode.spiffeid import SpiffeID, parse_spiffe_id
from meshnode.telemetry.attributes import PEER_JWT_SUBJECT, PEER_MTLS_SPIFFE_ID
from meshnode.telemetry.instruments import split_method
from meshnode.telemetry.rpcmetrics import RpcMetrics, Series

__all__ = ["Authorizer", "Verdict", "peer_key"]

_NO_IDENTITY = PeerIdentity(None, "the connection carries no TLS client identity")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One decision, ready to apply: ``code`` None means run the handler."""

    peer: SpiffeID | None
    decision: str  # "allow" | "deny" | "unauthenticated"
    code: grpc.StatusCode | None
    details: str
    rule: str | None
    reason: str
    policy: str
    policy_version: int
    dry_run: bool
    audit: bool
    final: bool  # False: depends on request headers, decide per call
    span_attributes: Mapping[str, AttributeValue]
    counted: Slot  # this verdict's attribute set in meshnode.authz.decisions
    # not final: the header rules left to test, and the verdict of each outcome (Residual.outcomes)
    residual: Residual | None = None
    outcomes: tuple[Verdict, ...] = ()
    #: both identities of an admitted call (``peer_mtls_id()``, ``peer_jwt()``)
    caller: Caller | None = None
    #: fields the audit record adds (with JWT-SVIDs: the mTLS peer and the token's subject)
    audit_fields: Mapping[str, str | None] | None = None
    series: Series | None = None  # RPC metrics of (caller, method): rpc.server.call.duration

    @property
    def span_status(self) -> Status | None:
        """The server span's status for a refused call: an error naming why (None: admitted)."""
        return None if self.code is None else Status(StatusCode.ERROR, f"{self.code.name}: {self.details}")

    def enter(self) -> None:
        """Make the caller ``peer_id()`` for the rest of the admitted call (its task's context)."""
        CURRENT_CALLER.set(self.caller)


class Authorizer:
    """Authorizes calls by the caller's verified SPIFFE ID against a policy.

    ``policy``: a :class:`Policy` or a :class:`PolicySource` (e.g. a
    :class:`PolicyFile`); with ``own_policy=True`` :meth:`close` closes it,
    otherwise its creator does. ``trust``: the node's accepted trust domains
    and bundles; with one trust domain, callers from others are refused;
    with more, each caller's chain is re-verified against its own trust
    domain's bundle. Without ``trust``, whatever the TLS layer verified is
    accepted: the server's root list must then hold one trust domain.
    ``audit``: which decisions get an audit record (a policy file may ask
    for more). ``dry_run``: policy denials are recorded but not enforced.
    ``jwt``: JWT-SVIDs on calls (``[authz] jwt``, ``principal``,
    ``jwt_forwarders``); None: the authorization metadata is not looked at.
    ``rpc_metrics``: where each call's duration and status go (its verdict
    carries the series of its caller and method); None: no RPC metrics.
    """

    def __init__(
        self,
        policy: Policy | PolicySource,
        *,
        trust: TrustInfo | None = None,
        audit: AuditCondition | str = AuditCondition.ON_DENY,
        dry_run: bool = False,
        cache_size: int = 4096,
        meter_provider: metrics.MeterProvider | None = None,
        auditor: Auditor | None = None,
        own_policy: bool = False,
        span_attributes: Mapping[str, AttributeValue] | None = None,
        record_spans: bool = True,
        jwt: JwtAuthn | None = None,
        rpc_metrics: RpcMetrics | None = None,
    ) -> None:
        if cache_size < 16:
            raise PolicyError(reason=f"cache_size must be at least 16, not {cache_size}", component="authz")
        self._source: PolicySource = StaticPolicy(policy) if isinstance(policy, Policy) else policy
        self._trust = trust
        self._audit = AuditCondition.parse(audit)
        self._dry_run = dry_run
        self._static_span = dict(span_attributes or {})  # e.g. the node's own ID, on every server span
        # False when the server has no tracing: saves the current-span lookup on every call
        self._record_spans = record_spans
        self._limit = cache_size
        self._auditor = auditor or Auditor()
        # (window of the certificate, [token,] method, policy version) -> (the certificate, its verdict)
        self._verdicts: dict[tuple[Any, ...], tuple[Any, Verdict]] = {}
        self._identities: dict[Any, PeerIdentity] = {}
        self._decisions = DecisionCounter.for_provider(meter_provider)
        self._owns_policy = own_policy
        self._jwt = jwt
        self._rpc_metrics = rpc_metrics

    # -- the per-call core ------------------------------------------------

    def check(self, context: Any, method: str) -> Verdict:
        """Decide one call from its servicer ``context``; records span, metric and audit.

        The common case (one trust domain, no JWT-SVIDs, a decision already
        made for this certificate, method and policy version) costs one
        ``auth_context()``, one dict lookup and the decision count.
        """
        active = self._source.current()
        auth: Mapping[str, Any] = context.auth_context()
        trust = self._trust
        snapshot: TrustSnapshot | None = None
        if trust is not None and len(trust.accepted_trust_domains) > 1:
            snapshot = trust.current()
        ident = peer_key(auth, snapshot)
        short = _window(ident)
        jwt = self._jwt
        token: JwtSvid | JwtRejection | None = None
        if jwt is None:
            key: tuple[Any, ...] = (short, method, active.version)
        else:  # the validated token (the validator's cached object) or the refusal decides too
            token = jwt.token(context.invocation_metadata())
            key = (short, token, method, active.version)
        hit = self._verdicts.get(key)
        if hit is not None and hit[0] == ident:  # the whole certificate, byte for byte
            verdict = hit[1]
        else:
            verdict = self._miss(key, ident, method, auth, snapshot, active, token)
        if verdict.residual is not None:  # header rules apply to this caller and method: test only those
            assert verdict.peer is not None
            headers = Request.from_metadata(verdict.peer, method, context.invocation_metadata()).headers
            verdict = verdict.outcomes[verdict.residual.pick(headers)]
        if self._record_spans or verdict.audit:
            self._observe(verdict, method)
        else:
            self._decisions.add(verdict.counted)
        return verdict

    def _miss(
        self,
        key: tuple[Any, ...],
        ident: Any,
        method: str,
        auth: Mapping[str, Any],
        snapshot: TrustSnapshot | None,
        active: ActivePolicy,
        token: JwtSvid | JwtRejection | None,
    ) -> Verdict:
        identity = _NO_IDENTITY if ident is None else self._identities.get(ident)
        if identity is None:
            identity = self._resolve(auth, snapshot)
            _store(self._identities, ident, identity, self._limit)
        verdict = self._verdict(identity, method, active, None, token)
        _store(self._verdicts, key, (ident, verdict), self._limit)
        return verdict

    def _resolve(self, auth: Mapping[str, Any], snapshot: TrustSnapshot | None) -> PeerIdentity:
        trust = self._trust
        if trust is None:
            return resolve_peer(auth)
        if snapshot is not None:  # federated: the bundles of the generation in the cache key
            return resolve_peer(auth, accepted=trust.accepted_trust_domains, bundles=snapshot)
        return resolve_peer(auth, accepted=trust.accepted_trust_domains or None)

    def _verdict(
        self, identity: PeerIdentity, method: str, active: ActivePolicy, request: Request | None,
        token: JwtSvid | JwtRejection | None = None,
    ) -> Verdict:
        policy, mtls = active.policy, identity.spiffe_id
        audit = self._audit.union(policy.audit)
        if mtls is None:
            return self._make(
                None, "unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                f"authz: no usable SPIFFE identity: {identity.problem}",
                Decision(False, None, identity.problem), active, method, audit, dry_run=False,
            )
        caller = self._caller(mtls, token, method, active, audit)
        if isinstance(caller, Verdict):
            return caller
        peer = caller.principal
        if request is None:
            residual = policy.resolve(peer, method)
            if not residual.final:
                outcomes = tuple(self._decided(caller, d, active, method, audit) for d in residual.outcomes)
                return dataclasses.replace(outcomes[-1], final=False, residual=residual, outcomes=outcomes)
            return self._decided(caller, residual.fallback, active, method, audit)
        return self._decided(caller, policy.decide(request), active, method, audit)

    def _caller(
        self, mtls: SpiffeID, token: JwtSvid | JwtRejection | None, method: str, active: ActivePolicy,
        audit: AuditCondition,
    ) -> Caller | Verdict:
        """Who calls: the mTLS peer, or (principal = "jwt") the token's subject; a refusal as a verdict."""
        jwt = self._jwt
        if isinstance(token, JwtRejection):  # refused or missing (required): who the caller is stays unknown
            return self._make(
                None, "unauthenticated", grpc.StatusCode.UNAUTHENTICATED, f"authz: JWT-SVID refused: {token.reason}",
                Decision(False, None, f"JWT-SVID refused: {token.reason}"), active, method, audit, dry_run=False,
                mtls=mtls,
            )
        if jwt is None or jwt.principal == "mtls" or token is None:
            return Caller(mtls, mtls, token)
        subject = token.subject
        if subject != mtls and mtls not in jwt.forwarders:
            reason = f"{mtls} carries the JWT-SVID of {subject} but is not in [authz] jwt_forwarders"
            caller = Caller(subject, mtls, token)
            return self._make(
                subject, "deny", grpc.StatusCode.PERMISSION_DENIED,
                f"authz: {mtls} may not carry the JWT-SVID of {subject}: it is not in [authz] jwt_forwarders",
                Decision(False, None, reason), active, method, audit, dry_run=False, caller=caller,
            )
        return Caller(subject, mtls, token)

    def _decided(
        self, caller: Caller, decision: Decision, active: ActivePolicy, method: str, audit: AuditCondition
    ) -> Verdict:
        peer = caller.principal
        if decision.allowed:
            return self._make(peer, "allow", None, "", decision, active, method, audit, dry_run=self._dry_run,
                              caller=caller)
        code = None if self._dry_run else grpc.StatusCode.PERMISSION_DENIED
        details = f"authz: {peer} is not allowed to call {method}"
        return self._make(peer, "deny", code, details, decision, active, method, audit, dry_run=self._dry_run,
                          caller=caller)

    def _make(
        self, peer: SpiffeID | None, outcome: str, code: grpc.StatusCode | None, details: str,
        decision: Decision, active: ActivePolicy, method: str, audit: AuditCondition,
        *, dry_run: bool, final: bool = True, caller: Caller | None = None, mtls: SpiffeID | None = None,
    ) -> Verdict:
        span: dict[str, AttributeValue] = {
            **self._static_span,
            "meshnode.authz.decision": outcome,
            "meshnode.authz.rule": decision.rule or "",
            "meshnode.authz.reason": decision.reason,
            "meshnode.authz.policy_version": active.version,
            "meshnode.authz.dry_run": dry_run,
        }
        if peer is not None:
            span["meshnode.peer.spiffe_id"] = str(peer)
        fields: dict[str, str | None] | None = None
        if self._jwt is not None:  # both identities, on the span and in the audit record
            mtls = caller.mtls if caller is not None else mtls
            jwt = caller.jwt if caller is not None else None
            fields = {
                "mtls_peer_id": str(mtls) if mtls is not None else None,
                "jwt_subject": str(jwt.subject) if jwt is not None else None,
            }
            if mtls is not None:
                span[PEER_MTLS_SPIFFE_ID] = str(mtls)
            if jwt is not None:
                span[PEER_JWT_SUBJECT] = str(jwt.subject)
        service, name = split_method(method)
        counted: dict[str, AttributeValue] = {
            "meshnode.authz.decision": outcome,
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "meshnode.authz.dry_run": dry_run,
        }
        series = None
        if self._rpc_metrics is not None:
            series = self._rpc_metrics.series("server", method, str(peer) if peer is not None else None)
        return Verdict(
            peer, outcome, code, details, decision.rule, decision.reason, active.policy.name, active.version,
            dry_run, audit.covers(outcome == "allow"), final, span, self._decisions.slot(counted),
            caller=caller, audit_fields=fields, series=series,
        )

    def _observe(self, verdict: Verdict, method: str) -> None:
        if self._record_spans:
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes(verdict.span_attributes)
                if verdict.code is not None:
                    span.set_status(verdict.span_status)  # type: ignore[arg-type]  # not None when refused
        self._decisions.add(verdict.counted)
        if verdict.audit:
            self._auditor.record(
                peer_id=str(verdict.peer) if verdict.peer is not None else None,
                method=method,
                decision=verdict.decision,
                rule=verdict.rule,
                policy=verdict.policy,
                policy_version=verdict.policy_version,
                dry_run=verdict.dry_run,
                reason=verdict.reason,
                extra=verdict.audit_fields,
            )

    # -- entry points -----------------------------------------------------

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` (any arity and kind) authorized for ``method`` (``/pkg.Svc/M``); sync
        behaviours run on the event loop's default executor (see :mod:`meshnode.pipeline`)."""
        return Pipeline(self.check).prepare(method, handler)

    def interceptor(self) -> AuthzInterceptor:
        """A grpc.aio server interceptor; place it after OTel's server interceptor."""
        return AuthzInterceptor(self.check)

    def registrar(self, server: Any) -> Any:
        """Stand-in for ``server`` in generated ``add_*Servicer_to_server`` calls."""
        return Pipeline(self.check).registrar(server)

    def close(self) -> None:
        """Close the policy source when this authorizer owns it (a watched file's thread); idempotent."""
        if self._owns_policy:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> Authorizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tooling ----------------------------------------------------------

    @property
    def jwt(self) -> JwtAuthn | None:
        """The JWT step (``[authz] jwt``), None when calls' tokens are not looked at."""
        return self._jwt

    @property
    def active(self) -> ActivePolicy:
        return self._source.current()

    @property
    def decisions(self) -> DecisionCounter:
        """The tally of ``meshnode.authz.decisions`` this authorizer counts in (shared per meter provider)."""
        return self._decisions

    def explain(
        self, peer: str | SpiffeID, method: str, metadata: Iterable[tuple[str, str | bytes]] = ()
    ) -> Explanation:
        """What the current policy decides for ``peer`` calling ``method``, rule by rule."""
        sid = peer if isinstance(peer, SpiffeID) else parse_spiffe_id(peer)
        return self._source.current().policy.explain(Request.from_metadata(sid, method, metadata))


def peer_key(auth: Mapping[str, Any], snapshot: TrustSnapshot | None = None) -> Any:
    """The cache key of a caller's identity: the certificate gRPC verified, byte for byte.

    ``auth`` is the call's ``auth_context()``. With ``snapshot`` (several
    trust domains accepted) the key also holds the intermediates the caller
    sent and the bundle generation the chain is re-verified against. None
    when the connection carries no client certificate.
    """
    pems = auth.get("x509_pem_cert")
    if not pems:
        return None
    if snapshot is None:
        return pems[0]
    return (pems[0], tuple(auth.get("x509_pem_cert_chain") or ()), snapshot.generation)


def _window(ident: Any) -> Any:
    """A cheap stand-in for a caller's certificate in dict keys: 64 bytes of its PEM's signature.

    Hashing a whole PEM certificate (about 1 KB, a new ``bytes`` on every
    call) costs 2-3 us per call on a busy server; these bytes (base64 of the
    signature, before the fixed footer) differ between certificates. Two
    certificates with the same window share a slot, never a decision: a hit
    counts only when the cached certificate equals the caller's, byte for byte.
    """
    if ident is None:
        return None
    pem = ident if isinstance(ident, bytes) else ident[0]
    return pem[-96:-32]


def _store(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
