"""The production checks: a policy must be able to allow some call, and leave health callable.

A server that denies every call is a misconfiguration, not a safe default:
production refuses such a policy at boot and on reload (the last good
policy stays), staging warns. "Every call" is decided by
:class:`~meshnode.authz.analysis.Analyzer` from the compiled matchers, so
all its spellings count alike: ``"*"``, ``"spiffe://*"``, ``"/*"``, a
trust-domain principal when that is the only accepted trust domain, deny
rules that split the callers between them, allow rules whose principals
all lie in trust domains the node does not accept, header conditions that
contradict each other. What the analysis cannot decide (a custom matcher
type, a policy too large for its work budget) is reported as a note, for a
warning: never as a pass or a refusal it cannot justify.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshnode.authz.analysis import Analyzer, Answer
from meshnode.authz.compiler import RuleShape

__all__ = ["HEALTH_METHODS", "SafetyReport", "check_rules"]

#: the methods health probes call (Kubernetes gRPC probes, grpc-health-probe, load balancers)
HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
_SHOWN = 3


@dataclass(frozen=True)
class SafetyReport:
    """``problems``: reasons production refuses the policy (complete messages); ``notes``: what could
    not be decided (complete messages, for a warning)."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _names(names: Sequence[str]) -> str:
    """``deny rule 'a'`` or ``deny rules 'a', 'b' and 3 more``."""
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ("deny rule " if len(names) == 1 else "deny rules ") + shown + more


def check_rules(
    name: str,
    deny_rules: Sequence[RuleShape],
    allow_rules: Sequence[RuleShape],
    *,
    accepted: Iterable[str] | None = None,
    health_rules: Sequence[RuleShape] | None = None,
    budget: int = 400_000,
) -> SafetyReport:
    """Check that some call of an ``accepted`` caller is allowed by one of ``allow_rules`` and no
    deny rule; with ``health_rules`` (every allow rule, built-in ones too), that no health method is
    denied to every caller."""
    where = f"policy {name!r}"  # problems and notes are reasons: the component ("authz: ") is the caller's
    if not allow_rules:
        return SafetyReport((
            f"{where} allows no caller, so every call would be denied; a server that denies everything is a "
            "misconfiguration: add [authz] allow = [...] or allow rules in the policy file",
        ))
    analyzer = Analyzer(accepted, budget=budget)
    problems: list[str] = []
    notes: list[str] = []
    for rule in deny_rules:
        answer, _, why = analyzer.answer(None, [rule])
        if answer is Answer.NO:
            problems.append(
                f"{where}: deny rule {rule.name!r} matches every caller and every method, so every call would "
                "be denied; narrow it with principals or paths"
            )
        elif answer is Answer.UNKNOWN:
            notes.append(f"{where}: could not decide whether deny rule {rule.name!r} matches every call: {why}")
    if not problems:
        problems += _allows_nothing(analyzer, where, deny_rules, allow_rules, notes)
    if not problems and health_rules is not None:
        problems += _health(analyzer, where, deny_rules, health_rules, notes)
    return SafetyReport(tuple(problems), tuple(notes))


def _allows_nothing(
    analyzer: Analyzer, where: str, deny_rules: Sequence[RuleShape], allow_rules: Sequence[RuleShape],
    notes: list[str],
) -> list[str]:
    dead: list[RuleShape] = []
    unknown = ""
    for rule in allow_rules:
        answer, _, why = analyzer.answer(rule, deny_rules)
        if answer is Answer.YES:
            return []
        if answer is Answer.UNKNOWN:
            unknown = unknown or f"allow rule {rule.name!r}: {why}"
        else:
            dead.append(rule)
    if unknown:
        notes.append(f"{where}: could not decide whether it can allow any call ({unknown}); "
                     "check it with 'meshnode policy explain'")
        return []
    reasons = [_why_dead(analyzer, rule, deny_rules) for rule in dead[:_SHOWN]]
    if len(dead) > _SHOWN:
        reasons.append(f"and {len(dead) - _SHOWN} more allow rules")
    return [
        f"{where} can never allow a call, so every call would be denied: {'; '.join(reasons)}; a server that "
        "denies everything is a misconfiguration: fix the allow rules or narrow the deny rules"
    ]


def _why_dead(analyzer: Analyzer, rule: RuleShape, deny_rules: Sequence[RuleShape]) -> str:
    if analyzer.answer(rule, [])[0] is Answer.NO:
        if analyzer.accepted is None:
            return f"allow rule {rule.name!r} can match no request"
        domains = ", ".join(sorted(analyzer.accepted)) or "none"
        return f"allow rule {rule.name!r} matches no caller of an accepted trust domain ({domains})"
    names = analyzer.overlapping(rule, deny_rules)
    return f"every call allow rule {rule.name!r} matches is denied by {_names(names)}"


def _health(
    analyzer: Analyzer, where: str, deny_rules: Sequence[RuleShape], health_rules: Sequence[RuleShape],
    notes: list[str],
) -> list[str]:
    denied: list[str] = []
    for method in HEALTH_METHODS:
        answers = []
        for rule in health_rules:
            answer, _, why = analyzer.answer(rule, deny_rules, method=method)
            answers.append(answer)
            if answer is Answer.YES:
                break
            if answer is Answer.UNKNOWN:
                notes.append(f"{where}: could not decide whether some caller may call {method}: {why}")
                break
        if all(a is Answer.NO for a in answers):
            denied.append(method)
    if not denied:
        return []
    names = list(dict.fromkeys(n for m in denied for n in analyzer.overlapping(None, deny_rules, method=m)))
    fix = f"narrow {_names(names)}" if names else "allow the service grpc.health.v1.Health"
    return [
        f"{where} denies {' and '.join(denied)} to every caller, so health checks (Kubernetes probes, load "
        f"balancers) can never pass; {fix}"
    ]
