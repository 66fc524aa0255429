"""The node's effective policy: ``[authz]`` settings, rules declared by services, built-in rules.

Composition layer (used by :mod:`meshnode.boot`): it knows the node's
configuration and services; :mod:`meshnode.authz` below it knows neither.

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

Outside development mode a policy that can only deny refuses to start
(:meth:`~meshnode.authz.Policy.check_production`); in development it is
allowed, with a warning, and every call is denied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from opentelemetry import metrics

from meshnode.authz.config import policy_source
from meshnode.authz.matchers import as_peer_matcher
from meshnode.authz.policy import Policy, Rule, allow, restrict
from meshnode.authz.source import PolicySource
from meshnode.config.node import AuthzSettings
from meshnode.errors import PolicyError
from meshnode.pipeline import ServiceMethods
from meshnode.service import method_allow

log = logging.getLogger("meshnode.authz")

__all__ = [
    "BUILTIN_SERVICES",
    "allows_only_builtins",
    "builtin_policy",
    "node_policy_source",
    "production_check",
    "reload_check",
    "service_policy",
]

#: services every caller of an accepted trust domain may call
BUILTIN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

def service_policy(services: Iterable[ServiceMethods]) -> Policy:
    """The rules the services declare (class-level ``allow``, method ``@only``), per discovered service."""
    rules: list[Rule] = []
    for found in services:
        service = found.servicer
        cls = type(service).__name__
        declared = tuple(getattr(type(service), "allow", ()) or ())
        if declared:
            peers = as_peer_matcher(declared, f"{cls}.allow")
            rules.append(allow(peers, service=found.name, name=f"{cls}.allow"))
            rules.append(restrict(peers, service=found.name, name=f"{cls}.allow (only these peers)"))
        for method in found.methods:
            narrowed = method_allow(service, method)
            if narrowed:
                peers = as_peer_matcher(narrowed, f"{cls}.{method} @only")
                rules.append(restrict(peers, method=f"/{found.name}/{method}", name=f"{cls}.{method} @only"))
    return Policy(tuple(rules), name="services")


def builtin_policy(accepted: Iterable[str]) -> Policy:
    """Health and reflection for callers of the accepted trust domains."""
    domains = tuple(f"spiffe://{td}" for td in sorted(accepted))
    rules = tuple(
        allow(as_peer_matcher(domains, "accepted trust domains"), service=svc, name=f"builtin: {svc}")
        for svc in BUILTIN_SERVICES
    )
    return Policy(rules, name="builtin")


def node_policy_source(
    settings: AuthzSettings,
    services: Iterable[ServiceMethods],
    accepted: Iterable[str],
    *,
    validate: Callable[[Policy], None] | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> PolicySource:
    """The node's policy: ``[authz] allow`` + the watched policy file + service rules + built-in rules.

    ``validate`` judges every *reloaded* policy (production: :func:`production_check`, so a reload
    that would deny everything keeps the last good policy); the first one is the caller's to judge.
    Raises PolicyError for an invalid allowlist, policy file or service rule; close the returned
    source (a file watcher) with the node.
    """
    accepted = tuple(accepted)
    return policy_source(
        allow=settings.allow,
        policy_file=settings.policy,
        extra=[service_policy(services), builtin_policy(accepted)],
        meter_provider=meter_provider,
        validate=validate,
    )


def production_check(accepted: Iterable[str]) -> Callable[[Policy], tuple[str, ...]]:
    """Raise PolicyError for a policy that can only deny (built-in rules aside) or that denies
    health to every caller; return what the analysis could not decide (worth a warning)."""
    accepted = tuple(accepted)
    builtin_names = {r.name for r in builtin_policy(accepted).rules}

    def check(policy: Policy) -> tuple[str, ...]:
        return policy.check_production(
            accepted=accepted, counted=lambda r: r.name not in builtin_names, health=True
        )

    return check


def reload_check(accepted: Iterable[str], mode: str) -> Callable[[Policy], None] | None:
    """What judges a reloaded policy: production refuses (the last good one stays in force, the
    failure is logged and counted), staging warns, development takes it as it is."""
    check = production_check(accepted)

    def refuse(policy: Policy) -> None:
        for note in check(policy):
            log.warning("authz: %s", note)

    def warn(policy: Policy) -> None:
        try:
            refuse(policy)
        except PolicyError as exc:
            log.warning("authz: would refuse in production: %s", exc.reason)

    return {"production": refuse, "staging": warn}.get(mode)


def allows_only_builtins(policy: Policy) -> bool:
    """True when no rule but the built-in ones allows anything (development warns: every call is denied)."""
    return len(policy.allow_rules) == len(BUILTIN_SERVICES)
