"""PeerChannel generations: a plan that fails, a new channel that never gets ready, a swap
superseded by a newer one. Calls keep working through each, and the channel ends on the
latest identity."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest

from meshnode.channel import ChannelPlan, PeerChannel
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.testing import ManualSource
from tests.support.channels import CLIENT_ID, SERVER_ID, echo_server, plan_for
from tests.support.wait import eventually_async


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a TLS handshake there never ends)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def say(channel: PeerChannel) -> str:
    reply = await demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="x"), timeout=10)
    return str(reply.caller)


async def test_a_plan_that_fails_keeps_the_current_channel_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    ca = DevCA("example.org")
    client = ManualSource(ca, CLIENT_ID)
    async with echo_server(ManualSource(ca, SERVER_ID)) as (port, _, _):
        broken: set[int] = set()

        def plan(snapshot: IdentitySnapshot) -> ChannelPlan:
            if snapshot.generation in broken:
                raise ValueError("no credentials for this snapshot")
            return plan_for(snapshot, port)

        channel = PeerChannel("server", client.current(), plan)
        try:
            assert await say(channel) == CLIENT_ID
            rotated = client.rotate()
            broken.add(rotated.generation)
            with caplog.at_level(logging.WARNING, logger="meshnode.channel"):
                channel.update(rotated)
                await eventually_async(lambda: "keeping the current channel to 'server'" in caplog.text,
                                       "the failed plan to be reported")
            assert "no credentials for this snapshot" in caplog.text
            assert channel.generation == 1 and channel.swaps == 0
            assert await say(channel) == CLIENT_ID  # still served by the first generation
        finally:
            await channel.close()


async def test_a_new_channel_that_never_gets_ready_is_swapped_in_after_the_warm_timeout() -> None:
    ca = DevCA("example.org")
    client = ManualSource(ca, CLIENT_ID)
    async with echo_server(ManualSource(ca, SERVER_ID)) as (port, _, _):
        with silent_listener() as silent:
            targets = {client.current().generation: port}

            def plan(snapshot: IdentitySnapshot) -> ChannelPlan:
                return plan_for(snapshot, targets.get(snapshot.generation, silent))

            channel = PeerChannel("server", client.current(), plan, warm_timeout=0.2)
            try:
                assert await say(channel) == CLIENT_ID
                channel.update(client.rotate())  # its target never completes a handshake
                await eventually_async(lambda: channel.swaps == 1, "the swap after the warm timeout")
                assert channel.generation == 2
            finally:
                await channel.close()


async def test_a_swap_superseded_by_a_newer_rotation_never_becomes_active(caplog: pytest.LogCaptureFixture) -> None:
    ca = DevCA("example.org")
    client = ManualSource(ca, CLIENT_ID)
    async with echo_server(ManualSource(ca, SERVER_ID)) as (port, _, _):
        with silent_listener() as silent:
            slow: set[int] = set()

            def plan(snapshot: IdentitySnapshot) -> ChannelPlan:
                return plan_for(snapshot, silent if snapshot.generation in slow else port)

            channel = PeerChannel("server", client.current(), plan, warm_timeout=1.0)
            try:
                first = client.rotate()
                slow.add(first.generation)
                caplog.set_level(logging.DEBUG, logger="meshnode.channel")
                channel.update(first)  # warms against a server that never answers
                await asyncio.sleep(0)  # let the loop start that build
                channel.update(client.rotate())  # a newer identity, on the real server
                await eventually_async(lambda: "generation 2 dropped before use" in caplog.text,
                                       "the superseded build to end")
                assert channel.generation == 3  # the superseded generation 2 never became active
                assert channel.swaps == 1
                assert await say(channel) == CLIENT_ID
            finally:
                await channel.close()
