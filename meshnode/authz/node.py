"""The node's authorizer: ``[authz]`` settings, rules declared by services, and the node's trust.

Rules come from three places and form one policy (deny always wins):

* ``[authz] allow``: callers allowed to call every method;
* ``[authz] policy``: an A43 file, watched and reloaded;
* the services: a :class:`~meshnode.service.NodeService` with a class-level
  ``allow`` list is callable *only* by those peers (an allow rule plus a
  :func:`~meshnode.authz.restrict` rule for the service: node-wide allow
  rules cannot widen it, deny rules still narrow it); ``@only(...)`` on a
  method narrows that method further (a caller needs both).

Built in: callers from the node's accepted trust domains may call the
health service (``grpc.health.v1.Health``) and server reflection, so probes
and tools work with any valid SVID; deny rules still apply to them. These
rules do not count as "a policy" for the production check.

In production a policy that can only deny, or that denies the health
service to every caller, refuses to start and is refused on reload (the
last good one stays): :meth:`~meshnode.authz.Policy.check_production`,
which decides it from the compiled matchers (:mod:`meshnode.authz.safety`).
Staging logs what production would refuse; development allows it (with a
warning when services exist and nothing is allowed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import grpc
from opentelemetry import metrics

from meshnode.authz.authorizer import Authorizer
from meshnode.authz.config import policy_source
from meshnode.authz.identity import AcceptedTrust, TrustSnapshot
from meshnode.authz.matchers import as_peer_matcher
from meshnode.authz.policy import Policy, Rule, allow, restrict
from meshnode.authz.source import PolicyFile
from meshnode.errors import PolicyError
from meshnode.service import method_allow, registration_of

__all__ = ["BUILTIN_SERVICES", "build_node_authorizer", "builtin_policy", "service_policy"]

#: services every caller of an accepted trust domain may call
BUILTIN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

log = logging.getLogger("meshnode.authz")


class _Settings(Protocol):
    @property
    def allow(self) -> tuple[str, ...]: ...

    @property
    def policy(self) -> Any: ...  # a path or None

    @property
    def audit(self) -> str: ...

    @property
    def dry_run(self) -> bool: ...


class _NodeConfig(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def authz(self) -> _Settings: ...


class _Source(Protocol):
    def current(self) -> TrustSnapshot: ...


class _MethodNames:
    """Stands in for a server to learn which service and methods a servicer registers."""

    def __init__(self) -> None:
        self.services: dict[str, tuple[str, ...]] = {}

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self.services[service] = tuple(handlers)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        pass


def service_policy(services: Iterable[object]) -> Policy:
    """The rules the services declare (class-level ``allow``, method ``@only``)."""
    rules: list[Rule] = []
    for service in services:
        cls = type(service).__name__
        names = _MethodNames()
        for _servicer, add in registration_of(service):
            add(service, names)
        declared = tuple(getattr(type(service), "allow", ()) or ())
        for svc, methods in names.services.items():
            if declared:
                peers = as_peer_matcher(declared, f"{cls}.allow")
                rules.append(allow(peers, service=svc, name=f"{cls}.allow"))
                rules.append(restrict(peers, service=svc, name=f"{cls}.allow (only these peers)"))
            for method in methods:
                narrowed = method_allow(service, method)
                if narrowed:
                    peers = as_peer_matcher(narrowed, f"{cls}.{method} @only")
                    rules.append(restrict(peers, method=f"/{svc}/{method}", name=f"{cls}.{method} @only"))
    return Policy(tuple(rules), name="services")


def builtin_policy(accepted: Iterable[str]) -> Policy:
    """Health and reflection for callers of the accepted trust domains."""
    domains = tuple(f"spiffe://{td}" for td in sorted(accepted))
    rules = tuple(
        allow(as_peer_matcher(domains, "accepted trust domains"), service=svc, name=f"builtin: {svc}")
        for svc in BUILTIN_SERVICES
    )
    return Policy(rules, name="builtin")


def build_node_authorizer(
    config: _NodeConfig,
    services: Iterable[object],
    source: _Source,
    accepted: Iterable[str],
    *,
    tracer_provider: Any = None,
    meter_provider: metrics.MeterProvider | None = None,
    span_attributes: Mapping[str, Any] | None = None,
    record_spans: bool = True,
) -> Authorizer:
    """The node's :class:`Authorizer`; it owns the policy file watcher (close it with the node).

    ``tracer_provider`` is accepted for symmetry: decisions are recorded on
    the current span, which the OpenTelemetry server interceptor makes.
    Raises PolicyError for an invalid allowlist, policy file or service rule.
    """
    settings = config.authz
    services = list(services)
    accepted = tuple(accepted)
    declared = service_policy(services)
    builtin = builtin_policy(accepted)
    builtin_names = {r.name for r in builtin.rules}

    def check_production(policy: Policy) -> None:
        """Refuse a policy that can only deny, or that denies health to every caller (built-in rules
        count for health only); warn about what the analysis could not decide."""
        notes = policy.check_production(
            accepted=accepted, counted=lambda r: r.name not in builtin_names, health=True
        )
        for note in notes:
            log.warning("%s", note)

    def warn_production(policy: Policy) -> None:
        """Staging: report what production would refuse, and run anyway."""
        try:
            check_production(policy)
        except PolicyError as exc:
            log.warning("authz: would refuse in production: %s", exc)

    validate = {"production": check_production, "staging": warn_production}.get(config.mode)
    watched = policy_source(
        allow=settings.allow,
        policy_file=settings.policy,
        extra=[declared, builtin],
        meter_provider=meter_provider,
        # production also refuses such a policy on reload (the last good one stays in force, the
        # failure is logged and counted); staging logs the warning for each new version
        validate=validate,
    )
    try:
        policy = watched.current().policy
        if validate is not None and not isinstance(watched, PolicyFile):
            validate(policy)  # a policy file was validated when it was loaded
        elif config.mode == "development" and len(policy.allow_rules) == len(BUILTIN_SERVICES) and services:
            log.warning(
                "authz: no caller is allowed (no [authz] allow, policy file or service allow list): "
                "every call will be denied"
            )
        return Authorizer(
            watched,
            trust=AcceptedTrust(source, frozenset(accepted)),
            audit=settings.audit,
            dry_run=settings.dry_run,
            meter_provider=meter_provider,
            own_policy=True,
            span_attributes=span_attributes,
            record_spans=record_spans,
        )
    except BaseException:
        getattr(watched, "close", lambda: None)()
        raise
