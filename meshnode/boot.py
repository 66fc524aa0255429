"""The one boot plan: from (config, services) to checks, policy, server plan and peer plan.

:meth:`Node.start <meshnode.node.Node.start>`, ``meshnode check`` and
``meshnode policy explain --config`` all call :func:`boot`, so they cannot
disagree about a configuration: ``check`` prints the checks ``run`` enforces
and says what ``run`` would do.

The steps, in order (a step that needs an earlier one's result is skipped
when that one failed):

1. **services**: instantiate ``[node] services``, discover their gRPC
   methods (:func:`meshnode.pipeline.discover`);
2. **static checks**: what the configuration alone must satisfy
   (:func:`meshnode.preflight.static_checks`), and that the metrics
   endpoint (``[telemetry] prometheus``) can listen on its address;
3. **identity**: obtain the SVID the production way (or take the given
   source), then check it (:func:`meshnode.preflight.identity_checks`);
4. **policy**: the effective policy (``[authz] allow``, the policy file, the
   services' rules, the built-in health/reflection rules) and whether it can
   allow anyone (:mod:`meshnode.node_policy`); a client-only node (no
   ``[node] listen``) has none;
5. **JWT-SVIDs**: the tokens sent to ``jwt = true`` peers (first ones
   fetched now) and the validator of ``[authz] jwt`` (:mod:`meshnode.node_jwt`);
6. **plans**: what the server binds and registers, and how peers are dialled
   (with each peer's endpoints as resolved now; a peer that cannot be
   resolved is a warning, not a refusal: it may come later).

Every step records :class:`~meshnode.preflight.Check` values; nothing here
raises for a failing check. :meth:`Boot.refusal` is the first failure that
refuses to start in a mode: ``always`` checks in every mode, ``production``
checks in production (staging logs them as warnings).
Runs on a worker thread (opening a Workload API source blocks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import metrics

from meshnode.authz.authorizer import Authorizer
from meshnode.authz.identity import AcceptedTrust
from meshnode.authz.jwt import JwtAuthn
from meshnode.authz.policy import Policy
from meshnode.authz.source import PolicySource
from meshnode.config.node import DEFAULT_DEV_TRUST_DOMAIN, NodeConfig, PeerConfig, parse_address
from meshnode.errors import ConfigError, IdentityError, MeshnodeError, PolicyError
from meshnode.fdlimit import connection_budget, current_limit
from meshnode.identity.guard import GuardedSource
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.source import IdentitySource
from meshnode.node_jwt import NodeJwt, node_jwt
from meshnode.node_policy import allows_only_builtins, node_policy_source, production_check, reload_check
from meshnode.peers import Liveness
from meshnode.pipeline import ServiceMethods, discover
from meshnode.preflight import (
    Check,
    identity_checks,
    identity_rules,
    missing_bundles,
    open_identity,
    refusal,
    static_checks,
)
from meshnode.resolver import Resolution, resolve
from meshnode.service import make_services, method_allow
from meshnode.telemetry.listen import probe_listen
from meshnode.telemetry.rpcmetrics import RpcMetrics

__all__ = ["Boot", "PeerPlan", "ServerPlan", "boot", "resolve_peers"]

log = logging.getLogger("meshnode.boot")


@dataclass(frozen=True)
class ServerPlan:
    """What the node's server binds and registers."""

    listen: str
    services: tuple[ServiceMethods, ...]
    generic: tuple[grpc.GenericRpcHandler, ...]
    options: tuple[tuple[str, Any], ...]

    @property
    def service_names(self) -> list[str]:
        return sorted(s.name for s in self.services)


@dataclass(frozen=True)
class PeerPlan:
    """The peers the node calls, how their connections find a dead peer, and their endpoints now.

    ``resolved``: each peer's endpoints as resolved at boot (a peer given
    as ``host:port`` too, though gRPC resolves that one again on each
    connect); ``unresolved``: peer -> why its resolution failed. Empty when
    boot ran offline.
    """

    peers: Mapping[str, PeerConfig]
    liveness: Liveness
    resolved: Mapping[str, Resolution] = field(default_factory=dict)
    unresolved: Mapping[str, str] = field(default_factory=dict)


def resolve_peers(peers: Mapping[str, PeerConfig]) -> tuple[dict[str, Resolution], dict[str, str]]:
    """Every peer's endpoints now (blocking): (name -> resolution, name -> error)."""
    resolved: dict[str, Resolution] = {}
    unresolved: dict[str, str] = {}
    for name, peer in sorted(peers.items()):
        try:
            resolved[name] = resolve(peer.endpoints)
        except MeshnodeError as exc:
            unresolved[name] = str(exc)
    return resolved, unresolved


def _peer_warnings(plan: PeerPlan) -> list[str]:
    out = [f"peers: cannot resolve peer '{name}' ({plan.peers[name].where}) now: {error}; the node keeps trying"
           for name, error in plan.unresolved.items()]
    out += [f"peers: peer '{name}' ({plan.peers[name].where}) has no endpoints now (the name resolves to no "
            "address); calls to it fail until it has some"
            for name, found in plan.resolved.items() if not found.endpoints]
    return out


@dataclass
class Boot:
    """Everything decided before binding: checks, the open identity source and policy, the plans.

    Owns the identity source it opened and the policy source (a file watcher):
    :meth:`close` closes them unless a node took them over (:meth:`hand_over`).
    """

    config: NodeConfig
    services: list[object] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # for the operator: dev fallback, ...
    warnings: list[str] = field(default_factory=list)  # logged by enforce()
    source: IdentitySource | None = None
    owns_source: bool = False
    snapshot: IdentitySnapshot | None = None
    accepted: frozenset[str] = frozenset()
    policy: PolicySource | None = None
    server: ServerPlan | None = None  # None: a client-only node (no [node] listen)
    peers: PeerPlan | None = None
    jwt: NodeJwt | None = None  # JWT-SVID tokens and validator; boot owns it until take_jwt()

    def refusal(self, mode: str | None = None) -> Check | None:
        """The check that stops the node in ``mode`` (default: the configured mode), or None."""
        return refusal(self.checks, mode or self.config.mode)

    def enforce(self) -> None:
        """Raise the refusing check's error; in staging, log what production would refuse."""
        refused = self.refusal()
        if refused is not None:
            raise refused.exception(self.checks)
        if self.config.mode == "staging":
            for c in self.checks:
                if not c.ok:
                    log.warning("preflight: would refuse in production: %s (%s). Fix: %s", c.name, c.detail, c.fix)
        for warning in self.warnings:
            log.warning("%s", warning)

    def authorizer(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        span_attributes: Mapping[str, Any] | None = None,
        record_spans: bool = True,
        jwt: JwtAuthn | None = None,
        rpc_metrics: RpcMetrics | None = None,
    ) -> Authorizer:
        """The node's authorizer; it takes over the policy source (closing the authorizer closes it).

        ``jwt``: the JWT step (default: the one boot built, while it still holds it)."""
        if self.policy is None or self.source is None:
            raise MeshnodeError("boot: no policy to authorize with (a client-only node, or boot failed)")
        policy, self.policy = self.policy, None
        authz = self.config.authz
        return Authorizer(
            policy, trust=AcceptedTrust(self.source, self.accepted), audit=authz.audit, dry_run=authz.dry_run,
            meter_provider=meter_provider, own_policy=True, span_attributes=span_attributes,
            record_spans=record_spans, rpc_metrics=rpc_metrics,
            jwt=jwt if jwt is not None else self.jwt.authn if self.jwt is not None else None,
        )

    def take_jwt(self) -> NodeJwt:
        """The JWT side (token thread, bundle sources), now the caller's to close."""
        taken, self.jwt = self.jwt, None
        return taken if taken is not None else NodeJwt()

    def hand_over(self) -> IdentitySource:
        """The identity source, now the caller's to close (when boot opened it)."""
        assert self.source is not None
        self.owns_source = False
        return self.source

    def close(self) -> None:
        """Close what boot opened and nobody took over; idempotent."""
        jwt, self.jwt = self.jwt, None
        if jwt is not None:
            jwt.close()
        policy, self.policy = self.policy, None
        close = getattr(policy, "close", None)
        if close is not None:
            close()
        if self.source is not None and self.owns_source:
            self.owns_source = False
            self.source.close()


def boot(
    config: NodeConfig,
    services: Sequence[object] = (),
    *,
    source: IdentitySource | None = None,
    generic: Sequence[grpc.GenericRpcHandler] = (),
    options: Sequence[tuple[str, Any]] = (),
    on_error: Callable[[str], None] | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    offline: bool = False,
) -> Boot:
    """Run every boot step before binding; see the module docstring. Never raises for a check.

    ``offline``: skip obtaining the identity (tooling such as ``policy explain --config``); the
    accepted trust domains then come from the configuration alone.
    """
    result = Boot(config)
    try:
        _boot(result, list(services), source, tuple(generic), tuple(options), on_error, meter_provider, offline)
    except BaseException:
        result.close()
        raise
    return result


def _boot(
    b: Boot,
    given: list[object],
    source: IdentitySource | None,
    generic: tuple[grpc.GenericRpcHandler, ...],
    options: tuple[tuple[str, Any], ...],
    on_error: Callable[[str], None] | None,
    meter_provider: metrics.MeterProvider | None,
    offline: bool,
) -> None:
    config = b.config
    found = _services(b, given)
    if found is None:
        return
    discovered, servicer_generic = found
    declares = any(getattr(type(s), "allow", ()) for s in b.services)
    b.checks += static_checks(config, service_policies=declares)
    if config.telemetry.prometheus is not None:
        b.checks.append(_metrics_check(config.telemetry.prometheus, probe=not offline))
    if offline:
        b.accepted = config.identity.accepted_trust_domains(_configured_trust_domain(config))
    else:
        snapshot = _identity(b, source, on_error)
        if snapshot is None:
            return
        b.accepted = config.identity.accepted_trust_domains(snapshot.trust_domain)
        b.warnings += _missing_bundle_warnings(config, snapshot)
        assert b.source is not None
        b.jwt, jwt_checks = node_jwt(config, b.source, b.accepted, serves=config.listen is not None,
                                     on_error=on_error)
        b.checks += jwt_checks
    liveness = Liveness(keepalive=config.keepalive, connect_timeout=config.connect_timeout)
    if offline:
        b.peers = PeerPlan(config.peers, liveness)
    else:
        b.peers = PeerPlan(config.peers, liveness, *resolve_peers(config.peers))
        b.warnings += _peer_warnings(b.peers)
    if config.listen is None:
        return  # a client-only node: no port, no policy
    if not _policy(b, discovered, meter_provider):
        return
    b.server = ServerPlan(
        config.listen, tuple(discovered), (*servicer_generic, *generic), (*_server_options(config), *options)
    )


def _metrics_check(address: str, *, probe: bool) -> Check:
    """[telemetry] prometheus resolves to this machine and its port is free (a probe bind, released).

    Offline (``check --config-only``: CI, rendered manifests) nothing is bound: the address is the
    one the node will have, not this machine's.
    """
    name = "metrics endpoint can listen"
    if not probe:
        return Check(name, True, f"{address} (not probed: no identity, no binding)", required="always")
    host, port = parse_address(address, "[telemetry] prometheus")
    problem = probe_listen(host, port)
    if problem is None:
        return Check(name, True, f"{address} (Prometheus text format, GET /metrics)", required="always")
    return Check(name, False, str(problem), "change [telemetry] prometheus", type(problem), "always",
                 message=str(problem), raised=problem)


def _configured_trust_domain(config: NodeConfig) -> str:
    idc = config.identity
    if idc.trust_domain is not None:
        return idc.trust_domain
    return idc.spiffe_id.trust_domain if idc.spiffe_id is not None else DEFAULT_DEV_TRUST_DOMAIN


def _missing_bundle_warnings(config: NodeConfig, snapshot: IdentitySnapshot) -> list[str]:
    return [
        f"node: no trust bundle for trust domain '{td}' (federates_with or a peer): its workloads cannot "
        "be verified until the identity source delivers one (SPIRE federation, federated_bundles_dir)"
        for td in missing_bundles(config, snapshot)
    ]


def _services(
    b: Boot, given: list[object]
) -> tuple[list[ServiceMethods], list[grpc.GenericRpcHandler]] | None:
    found: list[ServiceMethods] = []
    generic: list[grpc.GenericRpcHandler] = []
    try:
        b.services = given + make_services(b.config.services, str(b.config.source_path or "node.toml"))
        for service in b.services:
            services, only_generic = discover(service)
            if only_generic and _declares_rules(service):
                raise ConfigError(
                    f"service: {type(service).__name__} registers its methods only through a generic handler "
                    "(stubs generated by an old grpcio-tools), so meshnode cannot list them and cannot apply "
                    "its class 'allow' or @only rules; regenerate the stubs with a current grpcio-tools, or "
                    "drop the rules from the class and put them in [authz]"
                )
            found += services
            generic += only_generic
    except MeshnodeError as exc:
        b.checks.append(Check("services load", False, str(exc), "fix [node] services", type(exc), "always",
                              raised=exc))
        return None
    names = ", ".join(sorted(s.name for s in found)) or "none"
    b.checks.append(Check("services load", True, names, required="always"))
    return found, generic


def _declares_rules(service: object) -> bool:
    """Whether ``service`` narrows who may call it (class ``allow``, or ``@only`` on a method)."""
    if getattr(type(service), "allow", ()):
        return True
    return any(method_allow(service, name) for name in dir(type(service)) if not name.startswith("_"))


def _identity(
    b: Boot, source: IdentitySource | None, on_error: Callable[[str], None] | None
) -> IdentitySnapshot | None:
    config = b.config
    if source is None:
        try:
            source, notes = open_identity(config, on_error=on_error)
        except MeshnodeError as exc:
            b.checks.append(Check("SVID obtained", False, str(exc), "see the message", type(exc), "always",
                                  raised=exc))
            return None
        b.owns_source = True
        b.notes += notes
    snapshot = b.snapshot = source.current()
    fallback = bool(b.notes) and config.identity.source != "dev"
    b.checks.append(Check(
        "identity came from the configured source", not fallback,
        "dev fallback (no agent answered)" if fallback else source.description,
        "start the agent / fix [identity] socket (see the note above)", IdentityError,
    ))
    b.checks += identity_checks(config, snapshot)
    # From here on every consumer (authorizer, server credentials, peers, health) sees only updates
    # that keep the trust domain the node boots in (and [identity] spiffe_id): identity/guard.py
    b.source = GuardedSource(source, identity_rules(config, snapshot), snapshot, owns_inner=b.owns_source)
    b.owns_source = True  # the guard: closing it closes what boot opened, and only that
    return snapshot


def _policy(b: Boot, services: list[ServiceMethods], meter_provider: metrics.MeterProvider | None) -> bool:
    config = b.config
    try:
        b.policy = node_policy_source(config.authz, services, b.accepted,
                                      validate=reload_check(b.accepted, config.mode), meter_provider=meter_provider)
    except PolicyError as exc:
        b.checks.append(Check("policy is valid", False, str(exc), "run `meshnode policy check` on it",
                              PolicyError, "always", raised=exc))
        return False
    policy: Policy = b.policy.current().policy
    b.checks.append(Check("policy is valid", True, f"{len(policy.rules)} rules", required="always"))
    name = "policy can allow a call and leaves health open"
    try:
        notes = production_check(b.accepted)(policy)
    except PolicyError as exc:
        b.checks.append(Check(name, False, str(exc), "see the message", PolicyError, raised=exc))
    else:
        b.checks.append(Check(name, True, "some caller can call some method, and health"))
        b.warnings += [f"authz: {note}" for note in notes]
    if config.mode == "development" and allows_only_builtins(policy) and services:
        b.warnings.append(
            "authz: no caller is allowed (no [authz] allow, policy file or service allow list): "
            "every call will be denied"
        )
    return True


def _server_options(config: NodeConfig) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = []
    if config.max_connection_age > 0:
        # TLS authenticates a connection once, at its handshake: bound how long a connection (and the
        # certificates it was made with) lives. In-flight calls and streams finish (no grace limit).
        options.append(("grpc.max_connection_age_ms", int(config.max_connection_age * 1000)))
    return options + _connection_limits(config)


def _connection_limits(config: NodeConfig) -> list[tuple[str, Any]]:
    """gRPC core's own guards against connection floods, from [node] handshake_timeout and max_connections.

    ``grpc.server_handshake_timeout_ms`` closes a connection that has not
    finished TLS and sent its HTTP/2 settings in time (gRPC's default is 120 s).
    ``grpc.max_allowed_incoming_connections`` makes the listener close a
    connection at accept, before any handshake work, while that many are
    open (handshaking or established). The cap stays under the open-file
    limit, so a flood is shed instead of exhausting file descriptors.
    """
    cap = config.max_connections
    budget = connection_budget()
    if cap > budget:
        log.warning(
            "node: [node] max_connections = %d does not fit the open-file limit (%s): capping connections at %d; "
            "raise the limit (ulimit -n, systemd LimitNOFILE=) to allow more",
            cap, current_limit().describe(), budget,
        )
        cap = budget
    return [
        ("grpc.server_handshake_timeout_ms", max(1, round(config.handshake_timeout * 1000))),
        ("grpc.max_allowed_incoming_connections", cap),
    ]
