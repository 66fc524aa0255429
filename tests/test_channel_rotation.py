"""Rotation under load at the TLS layer: server credentials follow the
identity handshake by handshake, peer channels swap without failing a call."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshnode.channel import PeerChannel
from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.probe import server_certificate
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.channels import CLIENT_ID, SERVER_ID, echo_server, plan_for
from tests.support.wait import eventually_async


@pytest.mark.slow
async def test_client_and_server_rotate_under_load_without_a_failed_call() -> None:
    """Ten client+server rotations, one across a CA rotation, under unary and stream load on one
    stub: every client rotation swaps the channel once, the next handshakes carry the new client
    certificate, calls of both kinds run on every generation, and none fails."""
    ca = DevCA("example.org")
    server_src = ManualSource(ca, SERVER_ID)
    client_src = ManualSource(ca, CLIENT_ID)
    async with echo_server(server_src) as (port, servicer, _creds):
        channel = PeerChannel("server", client_src.current(), lambda s: plan_for(s, port))
        client_src.subscribe(channel.update)
        stub = demo_pb2_grpc.EchoStub(channel)  # made once, used across every swap
        failures: list[BaseException] = []
        done = {"unary": 0, "stream": 0}
        stop = asyncio.Event()

        async def unary_worker() -> None:
            while not stop.is_set():
                try:
                    reply = await stub.Say(demo_pb2.SayRequest(text="x"), timeout=5)
                    assert reply.caller == CLIENT_ID
                    done["unary"] += 1
                except Exception as exc:
                    failures.append(exc)

        async def stream_worker() -> None:
            while not stop.is_set():
                try:
                    got = [r.text async for r in stub.SayStream(demo_pb2.SayRequest(text="10"), timeout=10)]
                    assert got == [str(i) for i in range(10)]
                    done["stream"] += 1
                except Exception as exc:
                    failures.append(exc)

        async def load_ran() -> None:
            since = dict(done)
            await eventually_async(lambda: all(done[k] > since[k] for k in done), "unary and stream calls")

        async def client_rotated(why: str) -> IdentitySnapshot:
            """Rotate the client SVID; wait for the one swap it causes and a handshake that presents it."""
            swaps = channel.swaps
            new = client_src.rotate()
            await eventually_async(lambda: channel.swaps == swaps + 1, f"{why}: the channel to swap")
            await eventually_async(lambda: new.leaf.serial_number in servicer.client_serials,
                                   f"{why}: the server to see the new client certificate")
            return new

        workers = [asyncio.ensure_future(unary_worker()) for _ in range(4)]
        workers.append(asyncio.ensure_future(stream_worker()))
        try:
            await load_ran()
            for i in range(10):
                if i == 5:  # CA rotation: the new CA in every bundle before it signs anything
                    ca.prepare_rotation()
                    server_src.rotate()
                    await client_rotated("next CA in the bundle")
                    ca.activate_next()
                server_src.rotate()
                await client_rotated(f"rotation {i}")
                await load_ran()
            assert channel.generation == channel.swaps + 1  # one generation per swap, no other
        finally:
            stop.set()
            await asyncio.gather(*workers)
            await channel.close()
        assert failures == []


async def test_server_credentials_fetcher_picks_up_a_new_svid_on_the_next_handshake() -> None:
    ca = DevCA("example.org")
    server_src = ManualSource(ca, SERVER_ID)
    client_src = ManualSource(ca, CLIENT_ID)
    async with echo_server(server_src) as (port, _servicer, creds):
        assert creds.generation == 1
        server_src.rotate()
        assert creds.generation == 2
        # a brand-new channel = a new handshake = the new server certificate
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(client_src.current(), "example.org"),
            options=[("grpc.ssl_target_name_override", dns_name_for(SERVER_ID))],
        ) as ch:
            reply = await demo_pb2_grpc.EchoStub(ch).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert reply.caller == CLIENT_ID


async def test_the_server_keeps_its_certificate_when_a_snapshot_cannot_be_served() -> None:
    """A snapshot with no bundle for an accepted trust domain cannot verify any caller: the server
    keeps presenting (and verifying with) the last good one, handshake after handshake."""
    ca = DevCA("example.org")
    server_src = ManualSource(ca, SERVER_ID)
    client_src = ManualSource(ca, CLIENT_ID)
    async with echo_server(server_src) as (port, _servicer, creds):
        served = server_src.current()
        good_serial = served.leaf.serial_number
        other = issue_snapshot(DevCA("other.org"), "spiffe://other.org/node/server")
        server_src.set(other)  # other.org's SVID and bundle only: example.org callers cannot be verified
        assert creds.generation == served.generation
        leaf = await asyncio.to_thread(server_certificate, f"127.0.0.1:{port}")
        assert leaf.serial_number == good_serial
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", channel_credentials(client_src.current(), "example.org"),
            options=[("grpc.ssl_target_name_override", dns_name_for(SERVER_ID))],
        ) as ch:
            reply = await demo_pb2_grpc.EchoStub(ch).Say(demo_pb2.SayRequest(text="hi"), timeout=5)
            assert reply.caller == CLIENT_ID


class RotatesDuringRead(ManualSource):
    """Publishes a rotation right after handing out the snapshot it was asked for (once, when armed):
    the race of a rotation landing between a reader's current() and what it does with the result."""

    armed = False

    def current(self) -> IdentitySnapshot:
        snapshot = super().current()
        if self.armed:
            self.armed = False
            self.rotate()
        return snapshot


async def test_a_rotation_while_a_peer_channel_is_being_created_is_not_lost() -> None:
    from meshnode.peers import PeerChannels
    from tests.support.nodes import node_config, peer

    ca = DevCA("example.org")
    source = RotatesDuringRead(ca, CLIENT_ID)
    async with echo_server(ManualSource(ca, SERVER_ID)) as (port, servicer, _creds):
        config = node_config("client", peers={"server": peer(port, SERVER_ID)})
        channels = PeerChannels(source, config.peers, node_name="client")
        await channels.start()
        try:
            source.armed = True
            channel = channels.channel("server")  # built on the snapshot read before the rotation
            assert not source.armed
            # the swap to the rotated SVID's channel happens on the loop
            await eventually_async(lambda: channel.generation > 1, "the rotation to reach the channel")
            reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="x"), timeout=10)
            assert reply.caller == CLIENT_ID
            assert servicer.client_serials == [source.current().leaf.serial_number]  # the rotated SVID
        finally:
            await channels.close()
