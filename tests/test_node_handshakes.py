"""The handshake matrix over real loopback TLS, through a real node."""

from __future__ import annotations

import grpc
import pytest

from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.nodes import node_config, peer

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


async def call_say(channel: grpc.aio.Channel) -> demo_pb2.SayReply:
    return await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=5)


async def test_handshake_matrix() -> None:
    ca = DevCA("example.org")
    other_ca = DevCA("example.org")  # same name, different CA
    partner = DevCA("partner.org")  # federated (bundle known) but not accepted
    beta_src = ManualSource(ca, BETA, federated=[partner])
    async with Node(node_config("beta", allow=[ALPHA, "spiffe://partner.org"]), services=[EchoService()],
                    source=beta_src) as beta:
        port = beta.port
        target = f"127.0.0.1:{port}"
        name_opt = [("grpc.ssl_target_name_override", dns_name_for(BETA))]

        # good client: a node configured with beta as a peer
        alpha_cfg = node_config("alpha", peers={"beta": peer(port, BETA)})
        async with Node(alpha_cfg, source=ManualSource(ca, ALPHA)) as alpha:
            reply = await demo_pb2_grpc.EchoStub(alpha.channel("beta")).Say(demo_pb2.SayRequest(text="hi"))
            assert (reply.caller, reply.server) == (ALPHA, BETA)

        # no client certificate
        roots = beta_src.current().bundle_pem("example.org")
        async with grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots), options=name_opt) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call_say(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        # a client certificate from another CA (same trust domain name)
        foreign = issue_snapshot(other_ca, ALPHA)
        creds = grpc.ssl_channel_credentials(roots, foreign.key_pem, foreign.chain_pem)
        async with grpc.aio.secure_channel(target, creds, options=name_opt) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call_say(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        # a client from a trust domain beta knows the bundle of but does not accept
        partner_client = issue_snapshot(partner, "spiffe://partner.org/app", federated=[ca])
        creds = grpc.ssl_channel_credentials(roots, partner_client.key_pem, partner_client.chain_pem)
        async with grpc.aio.secure_channel(target, creds, options=name_opt) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call_say(ch)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        # a client expecting another server identity (dns mode pins the mapped name)
        wrong_cfg = node_config("alpha", peers={"beta": peer(port, "spiffe://example.org/node/impostor")})
        async with Node(wrong_cfg, source=ManualSource(ca, ALPHA)) as alpha:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await demo_pb2_grpc.EchoStub(alpha.channel("beta")).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "impostor.node.spiffe--id.example.org" in info.value.details()
            assert "-dns" in info.value.details()

        # a peer whose certificate chains to another trust domain than configured
        cross = node_config("alpha", peers={"beta": peer(port, "spiffe://partner.org/node/beta")})
        async with Node(cross, source=ManualSource(ca, ALPHA, federated=[partner])) as alpha:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await demo_pb2_grpc.EchoStub(alpha.channel("beta")).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "partner.org" in info.value.details()


async def test_server_sees_the_callers_verified_id_and_channel_uses_peer_bundle_only() -> None:
    ca = DevCA("example.org")
    async with Node(node_config("beta", allow=[ALPHA]), services=[EchoService()],
                    source=ManualSource(ca, BETA)) as beta:
        snap = issue_snapshot(ca, ALPHA, federated=[DevCA("partner.org")])
        creds = channel_credentials(snap, "example.org")
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{beta.port}", creds, options=[("grpc.ssl_target_name_override", dns_name_for(BETA))]
        ) as ch:
            reply = await call_say(ch)
        assert reply.caller == ALPHA
