"""Decision cost vs policy size: 10 to 10,000 rules, an A43 file and an ``[authz] allow`` list.

Each policy has ``n`` rules, half exact IDs and half prefixes
(``spiffe://example.org/team-i/*`` in the allowlist, ``.../group-i/*`` as A43
principals), with the measured callers matching the *last* rule, so a scan
of every rule is the worst case. Decisions go through the real
:meth:`~meshnode.authz.Authorizer.check` with a servicer context that
answers ``auth_context()`` with a caller's certificate, as gRPC's does:

* ``miss_version_us``: every check under a new policy version (the verdict
  cache misses; the caller's identity is cached): the policy's own cost;
* ``miss_caller_us``: every check by another caller certificate (the
  identity is parsed and checked too, as for a new connection's first call);
* ``hit_us``: the same caller, method and version again (the cache hit every
  later call of a connection takes).

Each is the best of several batches (see :func:`_per_call_us`). The
context's ``auth_context()`` is a dict here; gRPC's costs ~9 us more per
call, whatever the policy.

Load and reload at 10,000 rules: the A43 file read, parsed and merged by a
:class:`~meshnode.authz.PolicyFile` (``load_ms``), its reload after the file
changed (``reload_ms``, :meth:`PolicyFile.poll`; ``reload_production_ms``
with the production check that refuses a policy that can only deny), and the
allowlist built from 10,000 entries with its production check.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshnode.authz import ActivePolicy, AuditCondition, Authorizer, Policy, PolicyFile, policy_from_allowlist
from meshnode.bench.pki import TRUST_DOMAIN
from meshnode.bench.stats import percentile
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import certs_pem

__all__ = ["POLICY_SIZES", "a43_document", "allowlist_entries", "run_policy_scale"]

POLICY_SIZES = (10, 100, 1_000, 10_000)
_METHOD = "/meshnode.demo.v1.Echo/Say"
_TTL = dt.timedelta(hours=2)
_CALLERS = 64  # distinct caller certificates for the new-caller misses
_LAST = f"spiffe://{TRUST_DOMAIN}/bench/last"


def _caller(i: int) -> str:
    """The i-th measured caller: all under the last rule's prefix."""
    return f"{_LAST}/caller-{i}"


def allowlist_entries(rules: int) -> list[str]:
    """``rules`` allowlist entries, half exact IDs, half prefixes; the measured callers' prefix last."""
    out = [f"spiffe://{TRUST_DOMAIN}/svc/{i}" if i % 2 else f"spiffe://{TRUST_DOMAIN}/team-{i}/*"
           for i in range(rules - 1)]
    return [*out, _LAST + "/*"]


def a43_document(rules: int, name: str = "scale") -> dict[str, Any]:
    """An A43 policy of ``rules`` allow rules, half exact principals, half prefixes; the callers' last."""
    allow = [
        {"name": f"r{i}", "source": {"principals": [
            f"spiffe://{TRUST_DOMAIN}/svc/{i}" if i % 2 else f"spiffe://{TRUST_DOMAIN}/group-{i}/*"]}}
        for i in range(rules - 1)
    ]
    allow.append({"name": "measured", "source": {"principals": [_LAST + "/*"]}})
    return {"name": name, "allow_rules": allow}


class _Context:
    """The two things :meth:`Authorizer.check` reads of a grpc.aio servicer context."""

    __slots__ = ("_auth",)

    def __init__(self, leaf_pem: bytes) -> None:
        self._auth = {"x509_pem_cert": [leaf_pem], "transport_security_type": [b"ssl"]}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class _Versions:
    """A policy source whose version grows on every read: every check misses the verdict cache."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._version = 0

    def current(self) -> ActivePolicy:
        self._version += 1
        return ActivePolicy(self._policy, self._version)


def _per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """The mean cost of one call in the least disturbed of ``repeats`` batches, in microseconds.

    The best batch, not the median: on a shared machine other processes only
    ever add time, and the question is how the cost grows, not how busy the
    machine was.
    """
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return min(samples)


def _measure(policy: Policy, contexts: Sequence[_Context], calls: int, repeats: int) -> dict[str, float]:
    quiet = AuditCondition.NONE
    misses = Authorizer(_Versions(policy), audit=quiet, record_spans=False)
    first = misses.check(contexts[0], _METHOD)
    if first.decision != "allow":
        raise RuntimeError(f"bench: scale policy {policy.name} refused the measured caller: {first.reason}")
    miss_version = _per_call_us(lambda: misses.check(contexts[0], _METHOD), calls, repeats)
    # new callers: a fresh authorizer per batch, so each of its checks parses another certificate
    per_caller = []
    for _ in range(repeats):
        fresh = Authorizer(policy, audit=quiet, record_spans=False)
        start = time.perf_counter()
        for context in contexts:
            fresh.check(context, _METHOD)
        per_caller.append((time.perf_counter() - start) / len(contexts) * 1e6)
    cached = Authorizer(policy, audit=quiet, record_spans=False)
    cached.check(contexts[0], _METHOD)
    hit = _per_call_us(lambda: cached.check(contexts[0], _METHOD), calls * 4, repeats)
    return {"miss_version_us": miss_version, "miss_caller_us": min(per_caller), "hit_us": hit}


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _production(policy: Policy) -> None:
    """What a production node runs on every reloaded policy (refuses one that can only deny)."""
    from meshnode.node_policy import production_check

    production_check([TRUST_DOMAIN])(policy)


def _load_times(work: Path, rules: int, repeats: int) -> dict[str, float]:
    from meshnode.node_policy import production_check

    path = work / f"policy-{rules}.json"
    _write(path, a43_document(rules))
    loads: list[float] = []
    reloads: list[float] = []
    checked: list[float] = []
    allowlists: list[float] = []
    check = production_check([TRUST_DOMAIN])
    entries = allowlist_entries(rules)
    changes = 0
    for _ in range(repeats):
        start = time.perf_counter()
        PolicyFile(path, start=False)  # start=False: no watcher thread, nothing to close
        loads.append(time.perf_counter() - start)
        for validate, into in ((None, reloads), (_production, checked)):
            source = PolicyFile(path, start=False, validate=validate)
            changes += 1
            _write(path, a43_document(rules, name=f"scale-change-{changes}"))
            start = time.perf_counter()
            if not source.poll():
                raise RuntimeError(f"bench: the changed policy file {path} was not reloaded")
            into.append(time.perf_counter() - start)
        start = time.perf_counter()
        check(policy_from_allowlist(entries))
        allowlists.append(time.perf_counter() - start)
    return {
        "rules": rules,
        "a43_load_ms": percentile(loads, 50) * 1e3,
        "a43_reload_ms": percentile(reloads, 50) * 1e3,
        "a43_reload_production_ms": percentile(checked, 50) * 1e3,
        "allowlist_load_production_ms": percentile(allowlists, 50) * 1e3,
    }


def run_policy_scale(work: Path, *, sizes: Sequence[int] = POLICY_SIZES, calls: int = 2000,
                     repeats: int = 5) -> dict[str, Any]:
    """Decision costs per size and kind, and load/reload times at the largest size."""
    ca = DevCA(TRUST_DOMAIN)
    contexts = [_Context(certs_pem(ca.issue(_caller(i), _TTL).chain[:1])) for i in range(_CALLERS)]
    rows = []
    for size in sizes:
        path = work / f"decide-{size}.json"
        _write(path, a43_document(size))
        with PolicyFile(path, start=False) as a43:
            a43_policy = a43.current().policy
        for kind, policy in (("a43", a43_policy), ("allowlist", policy_from_allowlist(allowlist_entries(size)))):
            rows.append({"kind": kind, "rules": size, **_measure(policy, contexts, calls, repeats)})
    return {"decisions": rows, "load": _load_times(work, max(sizes), repeats)}
