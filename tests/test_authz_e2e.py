"""Authorization end to end: real mTLS on loopback, grpc.aio server, every RPC arity.

Each scenario runs twice: handlers wrapped at registration (what the node
does) and the same handlers behind the grpc.aio interceptor (plain servers).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshnode.authz import (
    AcceptedTrust,
    Authorizer,
    NoPeerIdentityError,
    Policy,
    allow,
    deny,
    parse_a43,
    peer_id,
)
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.identity import StaticSource
from meshnode.identity.snapshot import certs_pem
from meshnode.identity.x509svid import build_snapshot
from tests.support.authz import HOUR, SERVER_ID, ClientCert, RawCA, serve, status_of
from tests.support.probe import METHODS, SERVICE, Client, Probe, interceptors, registration

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
GAMMA = "spiffe://example.org/node/gamma"

POLICY = Policy(
    (
        allow(ALPHA, service=SERVICE, name="alpha-probes"),
        allow(BETA, method="/t.Probe/AsyncUnary", name="beta-async-unary"),
        allow(BETA, method="/t.Probe/SyncUnary", name="beta-sync-unary"),
        allow("spiffe://example.org", service="meshnode.demo.v1.Echo", name="org-echoes"),
        deny(GAMMA, method="/meshnode.demo.v1.Echo/SayStream", name="no-streams-for-gamma"),
    ),
    name="e2e",
)

MODES = ["wrap", "interceptor"]


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA("example.org")


@pytest.fixture(scope="module")
def ids(ca: DevCA) -> dict[str, ClientCert]:
    return {who: ClientCert.of(ca.issue(who, HOUR)) for who in (ALPHA, BETA, GAMMA)}


@pytest.mark.parametrize("mode", MODES)
async def test_allowed_caller_reaches_every_arity_and_sees_its_id(
    mode: str, ca: DevCA, ids: dict[str, ClientCert]
) -> None:
    probe = Probe()
    authorizer = Authorizer(POLICY)
    async with serve(ca, registration(authorizer, probe, mode), interceptors=interceptors(authorizer, mode)) as s:
        async with Client(s, ids[ALPHA], certs_pem(ca.bundle)) as client:
            for method in METHODS:
                code, details, got = await client.call(method)
                assert code is grpc.StatusCode.OK, (method, details)
                assert got and all(item == ALPHA.encode() for item in got), method
    assert sorted(probe.entered) == sorted(Probe().handlers())
    assert probe.read == 12  # 3 messages x 4 request-streaming calls


@pytest.mark.parametrize("mode", MODES)
async def test_denied_calls_never_enter_the_handler(mode: str, ca: DevCA, ids: dict[str, ClientCert]) -> None:
    probe = Probe()
    authorizer = Authorizer(POLICY)
    async with serve(ca, registration(authorizer, probe, mode), interceptors=interceptors(authorizer, mode)) as s:
        async with Client(s, ids[BETA], certs_pem(ca.bundle)) as client:
            for method in METHODS:
                code, details, _ = await client.call(method)
                if method in ("AsyncUnary", "SyncUnary"):  # beta's per-method allowances
                    assert code is grpc.StatusCode.OK, method
                    continue
                assert code is grpc.StatusCode.PERMISSION_DENIED, (method, details)
                assert details == f"authz: {BETA} is not allowed to call /t.Probe/{method}"
    assert sorted(probe.entered) == ["AsyncUnary", "SyncUnary"]
    assert probe.read == 0  # no request message was read on any streaming call


@pytest.mark.parametrize("mode", MODES)
async def test_generated_service_deny_wins_over_allow(mode: str, ca: DevCA, ids: dict[str, ClientCert]) -> None:
    authorizer = Authorizer(POLICY)
    async with serve(ca, registration(authorizer, Probe(), mode), interceptors=interceptors(authorizer, mode)) as s:
        for who in (ALPHA, GAMMA):
            async with s.channel(ids[who], certs_pem(ca.bundle)) as channel:
                stub = demo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
                reply = await stub.Say(demo_pb2.SayRequest(text="hi"))
                assert reply.caller == who
                code, details = await status_of(stub.SayStream(demo_pb2.SayRequest(text="hi")))
                if who == GAMMA:  # allowed by the trust domain rule, denied by the deny rule
                    assert code is grpc.StatusCode.PERMISSION_DENIED
                    assert GAMMA in details and "/meshnode.demo.v1.Echo/SayStream" in details
                    assert "no-streams-for-gamma" not in details  # never the policy's contents
                else:
                    assert code is grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("uris", "problem"),
    [
        ((), "0 URI SANs"),
        ((ALPHA, BETA), "2 URI SANs"),
        (("spiffe://example.org/a/../b",), "not a SPIFFE ID"),
        (("https://example.org/alpha",), "not a SPIFFE ID"),
        (("spiffe://example.org/alpha/",), "not a SPIFFE ID"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_no_usable_spiffe_identity_is_unauthenticated(
    mode: str, uris: tuple[str, ...], problem: str, ca: DevCA
) -> None:
    raw = RawCA("example.org odd CA")
    probe = Probe()
    authorizer = Authorizer(Policy((allow("*", name="anyone"),)))
    register = registration(authorizer, probe, mode)
    async with serve(ca, register, extra_roots=[raw.cert], interceptors=interceptors(authorizer, mode)) as s:
        async with Client(s, raw.issue(uris, dns=("odd.example.org",)), certs_pem(ca.bundle)) as client:
            for method in ("AsyncUnary", "SyncUnary", "SyncBidi"):
                code, details, _ = await client.call(method)
                assert code is grpc.StatusCode.UNAUTHENTICATED, (method, uris)
                assert details.startswith("authz: no usable SPIFFE identity: ") and problem in details
    assert probe.entered == []


async def test_dry_run_lets_denied_calls_through_and_audits_them(
    ca: DevCA, ids: dict[str, ClientCert], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.audit")
    probe = Probe()
    authorizer = Authorizer(POLICY, dry_run=True, audit="on_deny")
    raw = RawCA("odd")
    async with serve(ca, registration(authorizer, probe, "wrap"), extra_roots=[raw.cert]) as s:
        async with Client(s, ids[GAMMA], certs_pem(ca.bundle)) as client:
            assert await client.call("SyncServerStream") == (grpc.StatusCode.OK, "", [GAMMA.encode()] * 2)
            stub = demo_pb2_grpc.EchoStub(client.aio)  # type: ignore[no-untyped-call]
            await stub.Say(demo_pb2.SayRequest(text="allowed"))
        async with Client(s, raw.issue(()), certs_pem(ca.bundle)) as client:  # authentication still holds
            code, _, _ = await client.call("SyncUnary")
            assert code is grpc.StatusCode.UNAUTHENTICATED
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshnode.audit"]
    assert [(r["decision"], r["dry_run"], r["method"]) for r in records] == [
        ("deny", True, "/t.Probe/SyncServerStream"),
        ("unauthenticated", False, "/t.Probe/SyncUnary"),
    ]
    assert records[0]["peer_id"] == GAMMA and records[0]["rule"] is None
    assert records[1]["peer_id"] is None and "0 URI SANs" in records[1]["reason"]
    assert probe.entered == ["SyncServerStream"]


async def test_audit_records_follow_the_condition(
    ca: DevCA, ids: dict[str, ClientCert], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.audit")
    for condition, expected in (("none", []), ("on_allow", ["allow"]), ("all", ["allow", "deny"])):
        caplog.clear()
        authorizer = Authorizer(POLICY, audit=condition)
        async with serve(ca, registration(authorizer, Probe(), "wrap")) as s:
            async with Client(s, ids[BETA], certs_pem(ca.bundle)) as client:
                await client.call("SyncUnary")
                await client.call("SyncBidi")
        records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshnode.audit"]
        assert [r["decision"] for r in records] == expected, condition
        for r in records:
            assert set(r) == {
                "time", "peer_id", "method", "decision", "rule", "policy", "policy_version", "dry_run", "reason",
            }
            assert r["peer_id"] == BETA and r["policy"] == "e2e" and r["policy_version"] == 1
            assert r["time"].endswith("Z")
        if "allow" in expected:
            assert records[0]["rule"] == "beta-sync-unary" and records[0]["method"] == "/t.Probe/SyncUnary"


@pytest.mark.parametrize("mode", MODES)
async def test_span_attributes_and_decision_metric(mode: str, ca: DevCA, ids: dict[str, ClientCert]) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    authorizer = Authorizer(POLICY, meter_provider=MeterProvider(metric_readers=[reader]))
    otel = aio_server_interceptor(tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    chain = [otel, *interceptors(authorizer, mode)]
    async with serve(ca, registration(authorizer, Probe(), mode), interceptors=chain) as s:
        async with Client(s, ids[BETA], certs_pem(ca.bundle)) as client:
            await client.call("AsyncUnary")
            await client.call("AsyncUnary")
            await client.call("AsyncServerStream")
    by_name = {span.name: dict(span.attributes or {}) for span in spans.get_finished_spans()}
    allowed = by_name["/t.Probe/AsyncUnary"]
    assert allowed["meshnode.peer.spiffe_id"] == BETA
    assert allowed["meshnode.authz.decision"] == "allow"
    assert allowed["meshnode.authz.rule"] == "beta-async-unary"
    assert allowed["meshnode.authz.policy_version"] == 1
    assert allowed["meshnode.authz.dry_run"] is False
    denied = by_name["/t.Probe/AsyncServerStream"]
    assert (denied["meshnode.authz.decision"], denied["meshnode.authz.rule"]) == ("deny", "")
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        (dict(p.attributes or {}), getattr(p, "value", None))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "meshnode.authz.decisions"
        for p in m.data.data_points
    ]
    counted = {(a["meshnode.authz.decision"], a["rpc.service"], a["rpc.method"]): v for a, v in points}
    assert counted == {("allow", SERVICE, "AsyncUnary"): 2, ("deny", SERVICE, "AsyncServerStream"): 1}


async def test_federation_checks_the_chain_against_the_callers_own_trust_domain(ca: DevCA) -> None:
    other = RawCA("other.org CA")  # trust domain B's CA, trusted by the server
    server_svid = ca.issue(SERVER_ID, HOUR)
    bundles = {"example.org": ca.bundle, "other.org": (other.cert,)}
    snapshot = build_snapshot(server_svid.chain, server_svid.private_key, bundles)
    trust = AcceptedTrust(StaticSource(snapshot), frozenset(bundles))
    policy = Policy((allow([ALPHA, "spiffe://other.org/partner"], service=SERVICE, name="probers"),))
    authorizer = Authorizer(policy, trust=trust)
    third = RawCA("third.org CA")  # trusted by TLS, but not an accepted trust domain
    cases = [
        (ClientCert.of(ca.issue(ALPHA, HOUR)), grpc.StatusCode.OK),  # warms the cache for ALPHA's SANs
        (other.issue([ALPHA], dns=["alpha.example"]), grpc.StatusCode.UNAUTHENTICATED),  # B vouching for A
        (other.issue(["spiffe://other.org/partner"]), grpc.StatusCode.OK),
        (other.issue(["spiffe://other.org/stranger"]), grpc.StatusCode.PERMISSION_DENIED),
        (third.issue(["spiffe://third.org/x"]), grpc.StatusCode.UNAUTHENTICATED),
    ]
    async with serve(ca, registration(authorizer, Probe(), "wrap"), extra_roots=[other.cert, third.cert]) as s:
        for cert, expected in cases:
            async with Client(s, cert, certs_pem(ca.bundle)) as client:
                for method in ("AsyncUnary", "SyncUnary"):
                    code, details, _ = await client.call(method)
                    assert code is expected, (cert.chain[0].subject, method, details)
                    if cert.chain[0].issuer == other.cert.subject and expected is grpc.StatusCode.UNAUTHENTICATED:
                        assert "does not verify against the bundle of 'example.org'" in details


async def test_header_rules_of_a43_policies(ca: DevCA, ids: dict[str, ClientCert]) -> None:
    policy = parse_a43(
        json.dumps(
            {
                "name": "headers",
                "allow_rules": [
                    {
                        "name": "prod-callers",
                        "source": {"principals": ["spiffe://example.org/node/*"]},
                        "request": {"paths": ["/t.Probe/*"], "headers": [{"key": "X-Env", "values": ["prod*"]}]},
                    }
                ],
            }
        )
    )
    authorizer = Authorizer(policy)
    async with serve(ca, registration(authorizer, Probe(), "wrap")) as s:
        async with Client(s, ids[ALPHA], certs_pem(ca.bundle)) as client:
            assert await client.call("SyncUnary", (("x-env", "production"),)) == (
                grpc.StatusCode.OK, "", [ALPHA.encode()]
            )
            assert (await client.call("SyncBidi", (("x-env", "prod"),)))[0] is grpc.StatusCode.OK
            assert (await client.call("SyncUnary", (("x-env", "staging"),)))[0] is grpc.StatusCode.PERMISSION_DENIED
            assert (await client.call("AsyncUnary"))[0] is grpc.StatusCode.PERMISSION_DENIED


def test_peer_id_outside_an_authorized_call_raises() -> None:
    with pytest.raises(NoPeerIdentityError, match="only available while handling an RPC"):
        peer_id()


def test_wrapping_normalises_every_behavior_to_the_shape_grpc_aio_and_otel_both_accept() -> None:
    import inspect

    authorizer = Authorizer(POLICY)
    for name, handler in Probe().handlers().items():
        wrapped = authorizer.wrap_handler(f"/{SERVICE}/{name}", handler)
        for arity in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            before, after = getattr(handler, arity), getattr(wrapped, arity)
            assert (before is None) is (after is None)
            if before is not None:
                want = inspect.isasyncgenfunction if handler.response_streaming else inspect.iscoroutinefunction
                assert want(after), (name, arity)
        assert (wrapped.request_streaming, wrapped.response_streaming) == (
            handler.request_streaming,
            handler.response_streaming,
        )


class RecordingContext:
    """A servicer context that records the status a wrapped handler ends the call with."""

    def __init__(self) -> None:
        self.status: list[tuple[str, Any]] = []

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_code(self, code: Any) -> None:
        self.status.append(("code", code))

    def set_details(self, details: str) -> None:
        self.status.append(("details", details))

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError("a refusal must end the call with its status, not raise through the interceptors")


@pytest.mark.parametrize("name", ["SyncUnary", "AsyncUnary", "SyncServerStream", "WriterStream"])
async def test_a_refused_call_ends_with_its_status_without_raising_and_never_runs_the_handler(name: str) -> None:
    """No exception travels up through tracing (which would record it with a stack trace), and the
    handler is never entered: the wrapper returns right after setting the status."""
    probe = Probe()
    handler = probe.handlers()[name]
    wrapped = Authorizer(POLICY).wrap_handler(f"/t.Probe/{name}", handler)
    context = RecordingContext()
    if handler.response_streaming:
        assert [item async for item in wrapped.unary_stream(b"", context)] == []
    else:
        assert await wrapped.unary_unary(b"", context) is None
    (code, details) = context.status
    assert code == ("code", grpc.StatusCode.UNAUTHENTICATED)
    assert details[1].startswith("authz: no usable SPIFFE identity")
    assert probe.entered == []


async def test_a_plaintext_caller_is_unauthenticated() -> None:
    probe = Probe()
    authorizer = Authorizer(Policy((allow("*", name="anyone"),)))
    server = grpc.aio.server(interceptors=[authorizer.interceptor()])
    server.add_registered_method_handlers(SERVICE, probe.handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/t.Probe/SyncUnary")(b"")
    finally:
        await server.stop(None)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "authz: no usable SPIFFE identity: the connection carries no TLS client identity"
    assert probe.entered == []
