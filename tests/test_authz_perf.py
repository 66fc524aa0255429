"""What an allowed call costs: the decision core timed inside a real mTLS RPC handler.

A report, not a timed test: it prints the numbers (``pytest -s -m report``)
and asserts no timing, since a shared machine's timings vary several-fold.
What it does assert holds on any machine: every authorizer allows the call
from inside the handler, and a repeated check is a cache hit (the very
:class:`Verdict` decided first comes back), which is what makes a hit cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from meshnode.authz import AcceptedTrust, Authorizer, Policy, allow
from meshnode.devagent.ca import DevCA
from meshnode.identity import StaticSource
from meshnode.identity.snapshot import certs_pem
from meshnode.identity.x509svid import build_snapshot
from tests.support.authz import HOUR, SERVER_ID, ClientCert, RawCA, serve

ALPHA = "spiffe://example.org/node/alpha"
METHOD = "/t.Bench/Measure"
ROUNDS = 3000


def per_call_us(fn: Callable[[], Any], n: int = ROUNDS) -> float:
    best = float("inf")
    for _ in range(5):  # best of 5: the least disturbed run
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


async def measure(authorizers: dict[str, Authorizer], ca: DevCA, extra_roots: list[Any]) -> dict[str, float]:
    results: dict[str, float] = {}

    def handler(request: bytes, context: Any) -> bytes:
        results["auth_context()"] = per_call_us(context.auth_context)
        results["peer_identities()"] = per_call_us(context.peer_identities)
        for name, authorizer in authorizers.items():
            first = authorizer.check(context, METHOD)
            assert first.code is None and first.decision == "allow", name
            assert authorizer.check(context, METHOD) is first, f"{name}: a repeated check missed the cache"
            check = authorizer.check
            results[name] = per_call_us(lambda: check(context, METHOD))  # noqa: B023 (runs right here)
            tracer = TracerProvider().get_tracer("bench")
            with tracer.start_as_current_span("rpc"):
                results[name + ", recording span"] = per_call_us(lambda: check(context, METHOD))  # noqa: B023
        return b"ok"

    def register(server: grpc.aio.Server) -> None:
        server.add_registered_method_handlers("t.Bench", {"Measure": grpc.unary_unary_rpc_method_handler(handler)})

    client = ClientCert.of(ca.issue(ALPHA, HOUR))
    async with serve(ca, register, extra_roots=extra_roots) as s:
        async with s.channel(client, certs_pem(ca.bundle)) as channel:
            assert await channel.unary_unary(METHOD)(b"") == b"ok"
    return results


@pytest.mark.slow
@pytest.mark.report
async def test_allowed_call_cost_report() -> None:
    ca = DevCA("example.org")
    other = RawCA("other.org CA")
    policy = Policy((allow("spiffe://example.org/node/*", service="t.Bench", name="nodes"),))
    svid = ca.issue(SERVER_ID, HOUR)
    bundles = {"example.org": ca.bundle, "other.org": (other.cert,)}
    federated = AcceptedTrust(
        StaticSource(build_snapshot(svid.chain, svid.private_key, bundles)), frozenset(bundles)
    )
    no_metrics = metrics.NoOpMeterProvider()
    sdk_metrics = MeterProvider(metric_readers=[InMemoryMetricReader()])
    authorizers = {
        "check(), one trust domain, no SDK": Authorizer(policy, audit="none", meter_provider=no_metrics),
        "check(), one trust domain, SDK metrics": Authorizer(policy, audit="none", meter_provider=sdk_metrics),
        "check(), federated, no SDK": Authorizer(policy, trust=federated, audit="none", meter_provider=no_metrics),
    }
    assert not trace.get_current_span().is_recording()
    results = await measure(authorizers, ca, [other.cert])
    print()
    for name, us in results.items():
        print(f"  {name:<52} {us:6.2f} us/call  ({us / 300 * 100:.2f}% of a ~300 us RPC)")
