"""JWT-SVIDs on calls, end to end: the dev agent as a real Workload API, nodes on real mTLS over loopback.

Servers validate against the JWT bundles the agent streams (FetchJWTBundles);
clients are meshnode nodes (``[peers.NAME] jwt = true``: tokens from
FetchJWTSVID) or raw grpcio clients carrying a token from py-spiffe's
JwtSource. Every refusal is asserted by status code and reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from spiffe import JwtSource

from meshnode import Node, peer_id, peer_jwt, peer_mtls_id
from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.identity.x509svid import build_snapshot
from meshnode.jwtsvid import PeerTokens, WorkloadApiTokens
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import short_tmpdir
from tests.support.grpc_js_client import call_echo, grpc_js
from tests.support.jwt import (
    ALPHA,
    BETA,
    CLIENT,
    GAMMA,
    PROXY,
    bearer,
    claims,
    ec_key,
    forge,
    tampered,
    unsigned,
    with_payload,
)
from tests.support.jwt_proxy import ForwardingProxy
from tests.support.nodes import node_config, peer
from tests.support.wait import eventually, eventually_async

NAMES = {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "proxy": PROXY, "client": CLIENT}


class WhoEcho(EchoService):
    """Echo that records both identities of every call it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    async def Say(self, request: demo_pb2.SayRequest, context: grpc.aio.ServicerContext) -> demo_pb2.SayReply:
        token = peer_jwt()
        self.seen.append({"principal": str(peer_id()), "mtls": str(peer_mtls_id()),
                          "sub": str(token.subject) if token else None, "kid": token.key_id if token else None,
                          "aud": token.audience if token else None})
        return await super().Say(request, context)


@pytest.fixture
def make_agent() -> Iterator[Callable[..., DevAgentThread]]:
    started: list[DevAgentThread] = []
    dirs: list[Path] = []

    def make(ttl: int = 3600) -> DevAgentThread:
        d = short_tmpdir()
        dirs.append(d)
        entries = tuple(EntryConfig(name, parse_spiffe_id(sid)) for name, sid in NAMES.items())
        cfg = AgentConfig(trust_domain="example.org", socket_dir=d / "sockets", state_dir=d / "state",
                          svid_ttl=ttl, entries=entries)
        agent = DevAgentThread(cfg).start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.close()
    for d in dirs:
        subprocess.run(["rm", "-rf", str(d)], check=False)


@asynccontextmanager
async def serving(
    agent: DevAgentThread, name: str, authz: dict[str, Any], service: EchoService | None = None,
    **node_args: Any,
) -> AsyncIterator[Node]:
    source = WorkloadApiSource(agent.socket_address(name), timeout=10)
    try:
        config = node_config(name, allow=authz.pop("allow", [CLIENT]), extra={"authz": authz})
        async with Node(config, services=[service or WhoEcho()], source=source, **node_args) as node:
            yield node
    finally:
        source.close()


def snapshot_of(agent: DevAgentThread, name: str) -> IdentitySnapshot:
    svid = agent.svid(name)
    return build_snapshot(svid.chain, svid.private_key, {"example.org": agent.agent.ca.bundle})


def raw_channel(agent: DevAgentThread, name: str, port: int, server: str = BETA) -> grpc.aio.Channel:
    """A plain grpcio channel with the mTLS identity of ``name``, to the node serving as ``server``."""
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(snapshot_of(agent, name), "example.org"),
        options=[("grpc.ssl_target_name_override", dns_name_for(parse_spiffe_id(server)))],
    )


def workload_token(agent: DevAgentThread, name: str, audience: str) -> str:
    """A JWT-SVID from the Workload API, the way any py-spiffe workload gets one."""
    with JwtSource(socket_path=agent.socket_address(name), timeout_in_seconds=10) as source:
        return str(source.fetch_svid(audience={audience}).token)


async def say(channel: grpc.aio.Channel, metadata: Any = None) -> tuple[grpc.StatusCode, str, Any]:
    try:
        reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), metadata=metadata,
                                                          timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", None
    return grpc.StatusCode.OK, "", reply


# -- the server's checks, with a raw grpcio client -----------------------------------------------------------


async def test_raw_client_tokens_from_the_workload_api_are_checked(make_agent: Callable[..., DevAgentThread]) -> None:
    agent = make_agent()
    good = await asyncio.to_thread(workload_token, agent, "client", BETA)
    other_audience = await asyncio.to_thread(workload_token, agent, "client", GAMMA)
    ca = agent.agent.ca
    stranger = ec_key()
    cases = {
        "audience of another node": (other_audience, "names none of this server's audiences"),
        "expired": (ca.sign_jwt(CLIENT, [BETA], -dt.timedelta(minutes=2)), "expired at"),
        "signature tampered": (tampered(good), "signature does not verify"),
        "alg none": (unsigned(claims(sub=CLIENT), kid=ca.jwt_key_id), "not signed"),
        "HMAC": (forge(b"k" * 64, claims(sub=CLIENT), alg="HS256", kid=ca.jwt_key_id), 'alg "HS256" is not allowed'),
        "unknown kid": (forge(stranger, claims(sub=CLIENT), kid="not-a-key"), "key id \"not-a-key\" is not in"),
        "another trust domain": (forge(stranger, claims(sub="spiffe://evil.org/client")),
                                 "trust domain 'evil.org', which this server does not accept"),
        "sub not a SPIFFE ID": (with_payload(good, claims(sub="client")), "is not a SPIFFE ID"),
    }
    async with serving(agent, "beta", {"jwt": "required"}) as beta:
        async with raw_channel(agent, "client", beta.port) as channel:
            code, _, reply = await say(channel, bearer(good))
            assert code is grpc.StatusCode.OK and reply.caller == CLIENT
            for what, (token, reason) in cases.items():
                code, details, _ = await say(channel, bearer(token))
                assert code is grpc.StatusCode.UNAUTHENTICATED, what
                assert details.startswith("authz: JWT-SVID refused: ") and reason in details, (what, details)
                signature = token.split(".")[-1]
                assert len(signature) < 8 or signature not in details, what  # the token never comes back
            code, details, _ = await say(channel)
            assert code is grpc.StatusCode.UNAUTHENTICATED and "carries no JWT-SVID" in details
            code, details, _ = await say(channel, (("authorization", "Basic dXNlcjpwYXNz"),))
            assert code is grpc.StatusCode.UNAUTHENTICATED and "not 'Bearer <JWT-SVID>'" in details


async def test_optional_lets_calls_without_a_token_in_by_their_mtls_identity(
    make_agent: Callable[..., DevAgentThread],
) -> None:
    agent = make_agent()
    good = await asyncio.to_thread(workload_token, agent, "client", BETA)
    echo = WhoEcho()
    async with serving(agent, "beta", {"jwt": "optional"}, echo) as beta:
        async with raw_channel(agent, "client", beta.port) as channel:
            code, _, reply = await say(channel)
            assert code is grpc.StatusCode.OK and reply.caller == CLIENT
            code, _, _ = await say(channel, bearer(good))
            assert code is grpc.StatusCode.OK
            code, details, _ = await say(channel, bearer(tampered(good)))  # present: it must be valid
            assert code is grpc.StatusCode.UNAUTHENTICATED and "signature does not verify" in details
    assert [(s["principal"], s["sub"]) for s in echo.seen] == [(CLIENT, None), (CLIENT, CLIENT)]
    assert echo.seen[1]["aud"] == (BETA,)


async def test_jwt_audiences_add_accepted_audiences(make_agent: Callable[..., DevAgentThread]) -> None:
    agent = make_agent()
    token = await asyncio.to_thread(workload_token, agent, "client", "reports")
    async with serving(agent, "beta", {"jwt": "required", "jwt_audiences": ["reports"]}) as beta:
        async with raw_channel(agent, "client", beta.port) as channel:
            assert (await say(channel, bearer(token)))[0] is grpc.StatusCode.OK


# -- principal = "jwt": proxies ------------------------------------------------------------------------------


def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": "beta"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


async def test_a_forwarder_carrying_a_token_makes_its_subject_the_principal(
    make_agent: Callable[..., DevAgentThread], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.audit")
    agent = make_agent()
    token = await asyncio.to_thread(workload_token, agent, "client", BETA)
    exporter = InMemorySpanExporter()
    echo = WhoEcho()
    authz = {"principal": "jwt", "jwt_forwarders": [PROXY], "allow": [CLIENT], "audit": "all"}
    async with serving(agent, "beta", authz, echo, tracer_provider=provider(exporter)) as beta:
        async with raw_channel(agent, "proxy", beta.port) as channel:  # the proxy's mTLS, the client's token
            code, _, reply = await say(channel, bearer(token))
            assert code is grpc.StatusCode.OK and reply.caller == CLIENT
            code, details, _ = await say(channel)
            assert code is grpc.StatusCode.UNAUTHENTICATED and "carries no JWT-SVID" in details
        async with raw_channel(agent, "gamma", beta.port) as channel:  # not a forwarder: the same token refused
            code, details, _ = await say(channel, bearer(token))
            assert code is grpc.StatusCode.PERMISSION_DENIED
            assert details == (f"authz: {GAMMA} may not carry the JWT-SVID of {CLIENT}: it is not in "
                               "[authz] jwt_forwarders")
        async with raw_channel(agent, "client", beta.port) as channel:  # its own token over its own mTLS
            assert (await say(channel, bearer(token)))[0] is grpc.StatusCode.OK
    assert [(s["principal"], s["mtls"], s["sub"]) for s in echo.seen] == [(CLIENT, PROXY, CLIENT),
                                                                          (CLIENT, CLIENT, CLIENT)]
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "meshnode.audit"]
    assert [(r["decision"], r["peer_id"], r["mtls_peer_id"], r["jwt_subject"]) for r in records] == [
        ("allow", CLIENT, PROXY, CLIENT),
        ("unauthenticated", None, PROXY, None),
        ("deny", CLIENT, GAMMA, CLIENT),
        ("allow", CLIENT, CLIENT, CLIENT),
    ]
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    first = dict(spans[0].attributes or {})
    assert first["meshnode.peer.spiffe_id"] == CLIENT
    assert first["meshnode.peer.mtls_spiffe_id"] == PROXY and first["meshnode.peer.jwt_subject"] == CLIENT


async def test_a_tls_terminating_proxy_forwards_the_caller_as_principal(
    make_agent: Callable[..., DevAgentThread],
) -> None:
    agent = make_agent()
    token = await asyncio.to_thread(workload_token, agent, "client", BETA)
    echo = WhoEcho()
    authz = {"principal": "jwt", "jwt_forwarders": [PROXY], "allow": [CLIENT]}
    async with serving(agent, "beta", authz, echo) as beta:
        async with ForwardingProxy(snapshot_of(agent, "proxy"), f"127.0.0.1:{beta.port}", BETA) as proxy:
            async with raw_channel(agent, "client", proxy.port, server=PROXY) as channel:
                code, _, reply = await say(channel, bearer(token))
                assert code is grpc.StatusCode.OK and reply.caller == CLIENT
                code, details, _ = await say(channel, bearer(tampered(token)))
                assert code is grpc.StatusCode.UNAUTHENTICATED and "signature does not verify" in details
            # another workload of the trust domain goes through the proxy with its own token: it is the
            # principal, and the policy (allow = client only) decides on it, not on the proxy
            gamma_token = await asyncio.to_thread(workload_token, agent, "gamma", BETA)
            async with raw_channel(agent, "gamma", proxy.port, server=PROXY) as channel:
                code, details, _ = await say(channel, bearer(gamma_token))
                assert code is grpc.StatusCode.PERMISSION_DENIED
                assert details == f"authz: {GAMMA} is not allowed to call /meshnode.demo.v1.Echo/Say"
    assert [(s["principal"], s["mtls"]) for s in echo.seen] == [(CLIENT, PROXY)]


# -- the client side: nodes send tokens -----------------------------------------------------------------------


async def test_a_node_sends_one_fetched_token_on_many_calls(
    make_agent: Callable[..., DevAgentThread], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meshnode.devagent.server")
    agent = make_agent()
    echo = WhoEcho()
    async with serving(agent, "beta", {"jwt": "required", "allow": [ALPHA]}, echo) as beta:
        alpha_source = WorkloadApiSource(agent.socket_address("alpha"), timeout=10)
        config = node_config("alpha", peers={"beta": peer(beta.port, BETA, jwt=True), "gamma": peer(beta.port, BETA,
                                                                                                     jwt=True)})
        try:
            async with Node(config, source=alpha_source) as alpha:
                stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)
                same_audience = alpha.stub("gamma", demo_pb2_grpc.EchoStub)
                replies = await asyncio.gather(*(s.Say(demo_pb2.SayRequest(text="x"), timeout=10)
                                                 for s in [stub, same_audience] * 25))
                assert {r.caller for r in replies} == {ALPHA}
                validator = beta.authorizer.jwt.validator  # type: ignore[union-attr]
                assert validator.verified == 1  # 50 calls, one token, one signature check
        finally:
            alpha_source.close()
    issued = [r.getMessage() for r in caplog.records if "issued JWT-SVID" in r.getMessage()]
    assert len(issued) == 1 and f"for {ALPHA}" in issued[0] and f"audience ['{BETA}']" in issued[0]
    assert {s["sub"] for s in echo.seen} == {ALPHA}


async def test_no_token_no_call_then_the_token_file_is_read_when_it_appears(
    make_agent: Callable[..., DevAgentThread], tmp_path: Path,
) -> None:
    agent = make_agent()
    echo = WhoEcho()
    token_file = tmp_path / "beta.token"
    async with serving(agent, "beta", {"jwt": "required", "allow": [ALPHA]}, echo) as beta:
        alpha_source = WorkloadApiSource(agent.socket_address("alpha"), timeout=10)
        config = node_config("alpha", peers={"beta": peer(beta.port, BETA, jwt=True, jwt_token_file=str(token_file))})
        try:
            async with Node(config, source=alpha_source) as alpha:
                stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Say(demo_pb2.SayRequest(text="x"), timeout=10)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert refused.value.details() == (
                    f"meshnode: call to peer 'beta' not sent: no JWT-SVID for audience '{BETA}' from the token "
                    f"file {token_file}: the token file {token_file} does not exist")
                stream_refused = stub.SayStream(demo_pb2.SayRequest(text="a b"))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    [r async for r in stream_refused]
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert echo.seen == [] and beta.authorizer.jwt.validator.verified == 0  # type: ignore[union-attr]
                # spiffe-helper writes the token: the node reads it (no restart), calls carry it
                first = agent.agent.ca.sign_jwt(ALPHA, [BETA], dt.timedelta(minutes=5))
                token_file.write_text(first + "\n")

                async def accepted() -> bool:
                    try:
                        await stub.Say(demo_pb2.SayRequest(text="x"), timeout=10)
                    except grpc.aio.AioRpcError:
                        return False
                    return True

                await eventually_async(accepted, "the node to send the token from the file")
                second = agent.agent.ca.sign_jwt(ALPHA, [BETA, "x"], dt.timedelta(minutes=5))
                token_file.write_text(second)  # renewed on disk: re-read

                async def renewed() -> bool:
                    return await accepted() and echo.seen[-1]["aud"] == (BETA, "x")

                await eventually_async(renewed, "a call with the token renewed on disk")
        finally:
            alpha_source.close()


def test_tokens_are_renewed_at_half_life_and_calls_never_wait_for_the_agent(
    make_agent: Callable[..., DevAgentThread],
) -> None:
    agent = make_agent()
    now = [time.time()]
    tokens = PeerTokens(clock=lambda: now[0])
    fetcher = WorkloadApiTokens(agent.socket_address("alpha"), lambda: parse_spiffe_id(ALPHA))
    slot = tokens.slot(BETA, fetcher)
    assert tokens.slot(BETA, fetcher) is slot  # one slot per audience and source
    try:
        assert tokens.start() == []
        first = slot.token
        assert first is not None and slot.fetches == 1 and str(first.subject) == ALPHA
        life = first.expiry - first.issued_at
        assert slot.refresh_at is not None and slot.refresh_at <= first.issued_at + life / 2
        header = slot()
        assert header == ("authorization", f"Bearer {first.value}")
        assert all(slot() == header for _ in range(1000)) and slot.fetches == 1  # calls cost no fetch
        now[0] = slot.refresh_at  # half-life: renewed in the background
        tokens.wake()
        eventually(lambda: slot.fetches == 2 and slot.token is not first, "the renewal at half-life")
        renewed = slot()
        assert renewed != header and isinstance(renewed, tuple)
        agent.close()  # the agent goes away: calls keep the token they have, without waiting
        now[0] = slot.refresh_at or 0.0
        tokens.wake()
        eventually(lambda: slot.fetches >= 3 and slot.error != "", "a failed renewal")
        assert "the Workload API at" in slot.error
        assert slot() == renewed  # still valid: still sent
        now[0] = (slot.token.expiry if slot.token else 0.0) + 1  # expired and not renewed: no call goes out
        refused = slot()
        assert isinstance(refused, str) and "expired at" in refused and "could not be renewed" in refused
    finally:
        tokens.close()


@pytest.mark.slow
async def test_relay_with_jwt_required_survives_a_jwt_key_rotation(make_agent: Callable[..., DevAgentThread]) -> None:
    agent = make_agent(ttl=6)  # JWT-SVIDs of 6 s: renewed every 3 s
    echo = WhoEcho()
    async with serving(agent, "beta", {"jwt": "required", "allow": [ALPHA]}, echo) as beta:
        alpha_source = WorkloadApiSource(agent.socket_address("alpha"), timeout=10)
        config = node_config("alpha", peers={"beta": peer(beta.port, BETA, jwt=True)})
        failures: list[BaseException] = []
        done = [0]
        stop = asyncio.Event()
        try:
            async with Node(config, source=alpha_source) as alpha:
                stub = alpha.stub("beta", demo_pb2_grpc.EchoStub)

                async def calls() -> None:
                    while not stop.is_set():
                        try:
                            reply = await stub.Say(demo_pb2.SayRequest(text="x"), timeout=10)
                            assert reply.caller == ALPHA
                            done[0] += 1
                        except Exception as exc:
                            failures.append(exc)
                        await asyncio.sleep(0.01)

                async def more_calls() -> None:
                    since = done[0]
                    await eventually_async(lambda: done[0] > since + 5, "calls to go on")

                tasks = [asyncio.ensure_future(calls()) for _ in range(3)]
                try:
                    await more_calls()
                    ca = agent.agent.ca
                    old_kid = ca.jwt_key_id
                    await asyncio.to_thread(agent.rotate_ca, activate_after=1.0)
                    new_kid = ca.jwt_key_id
                    assert new_kid != old_kid
                    await eventually_async(lambda: echo.seen[-1]["kid"] == new_kid,
                                           "beta to validate alpha's token signed by the new key")
                    validator = beta.authorizer.jwt.validator  # type: ignore[union-attr]
                    await eventually_async(
                        lambda: old_kid not in validator.bundles.current().bundles["example.org"].keys,
                        "the old JWT key to leave beta's JWT bundle", timeout=60)
                    await more_calls()
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
        finally:
            alpha_source.close()
    assert failures == []
    kids = [s["kid"] for s in echo.seen]
    assert kids[0] == old_kid and kids[-1] == new_kid and set(kids) == {old_kid, new_kid}


def bundle_doc(agent: DevAgentThread) -> bytes:
    """The agent's trust domain as a SPIFFE bundle (spire-server bundle show -format spiffe): CA + JWT keys."""
    from tests.support.federation import x509_key

    keys = [x509_key(c) for c in agent.agent.ca.bundle] + json.loads(agent.agent.ca.jwks())["keys"]
    return json.dumps({"spiffe_sequence": 1, "keys": keys}).encode()


async def test_files_source_validates_with_jwt_bundles_dir(
    make_agent: Callable[..., DevAgentThread], tmp_path: Path,
) -> None:
    agent = make_agent()
    beta = snapshot_of(agent, "beta")
    for name, data in (("svid.pem", beta.chain_pem), ("key.pem", beta.key_pem), ("bundle.pem",
                                                                                   beta.bundle_pem("example.org"))):
        (tmp_path / name).write_bytes(data)
    jwt_dir = tmp_path / "jwt-bundles"
    jwt_dir.mkdir()
    (jwt_dir / "example.org.json").write_bytes(bundle_doc(agent))
    identity = {"source": "files", "trust_domain": "example.org", "cert": str(tmp_path / "svid.pem"),
                "key": str(tmp_path / "key.pem"), "bundle": str(tmp_path / "bundle.pem"),
                "jwt_bundles_dir": str(jwt_dir)}
    config = node_config("beta", allow=[CLIENT], identity=identity, extra={"authz": {"jwt": "required"}})
    token = await asyncio.to_thread(workload_token, agent, "client", BETA)
    async with Node(config, services=[WhoEcho()]) as node:
        async with raw_channel(agent, "client", node.port) as channel:
            code, _, reply = await say(channel, bearer(token))
            assert code is grpc.StatusCode.OK and reply.caller == CLIENT
            (jwt_dir / "example.org.json").unlink()  # the trust domain's JWT keys are withdrawn

            async def refused() -> bool:
                code, details, _ = await say(channel, bearer(token))
                return code is grpc.StatusCode.UNAUTHENTICATED and "no JWT bundle for trust domain 'example.org'" \
                    in details

            await eventually_async(refused, "the token to be refused once the bundle file is gone")


# -- an independent client: @grpc/grpc-js on Node.js ---------------------------------------------------------

@pytest.mark.slow
async def test_a_grpc_js_client_with_a_workload_api_token(
    make_agent: Callable[..., DevAgentThread], tmp_path: Path,
) -> None:
    grpc_js()
    agent = make_agent()
    client = snapshot_of(agent, "client")
    for name, data in (("ca.pem", client.bundle_pem("example.org")), ("cert.pem", client.chain_pem),
                       ("key.pem", client.key_pem)):
        (tmp_path / name).write_bytes(data)
    good = await asyncio.to_thread(workload_token, agent, "client", BETA)
    echo = WhoEcho()
    async with serving(agent, "beta", {"jwt": "required"}, echo) as beta:

        async def call(token: str) -> dict[str, Any]:
            return await call_echo(f"127.0.0.1:{beta.port}", dns_name_for(parse_spiffe_id(BETA)), tmp_path, token)

        ok = await call(good)
        assert ok == {"code": 0, "details": "", "caller": CLIENT}
        missing = await call("-")
        assert missing["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "carries no JWT-SVID" in missing["details"]
        bad = await call(tampered(good))
        assert bad["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "signature does not verify" in bad["details"]
    assert [(s["principal"], s["sub"]) for s in echo.seen] == [(CLIENT, CLIENT)]


async def test_a43_policy_files_decide_on_the_principal(make_agent: Callable[..., DevAgentThread],
                                                        tmp_path: Path) -> None:
    agent = make_agent()
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"name": "jwt-principal", "allow_rules": [
        {"name": "client-says", "source": {"principals": [CLIENT]},
         "request": {"paths": ["/meshnode.demo.v1.Echo/Say"]}},
    ]}))
    client_token = await asyncio.to_thread(workload_token, agent, "client", BETA)
    gamma_token = await asyncio.to_thread(workload_token, agent, "gamma", BETA)
    authz = {"principal": "jwt", "jwt_forwarders": [PROXY], "allow": [], "policy": str(policy)}
    async with serving(agent, "beta", authz) as beta:
        async with raw_channel(agent, "proxy", beta.port) as channel:
            code, _, reply = await say(channel, bearer(client_token))
            assert code is grpc.StatusCode.OK and reply.caller == CLIENT
            code, details, _ = await say(channel, bearer(gamma_token))
            assert code is grpc.StatusCode.PERMISSION_DENIED
            assert details == f"authz: {GAMMA} is not allowed to call /meshnode.demo.v1.Echo/Say"
