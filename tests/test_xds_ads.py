"""The ADS server's state-of-the-world protocol: versions, nonces, ACK, NACK, pushes."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import grpc

from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import short_tmpdir
from meshnode.xds.ads import ADS_SERVICE, AdsServer, ServedResources, StreamState
from meshnode.xds.resources import CLUSTER_TYPE, LISTENER_TYPE, PeerTarget, peer_resources
from meshnode.xds.v3 import envoy_pb2 as pb


def peers(**addresses: str) -> Any:
    targets = {n: PeerTarget(a, parse_spiffe_id(f"spiffe://example.org/{n}")) for n, a in addresses.items()}
    return peer_resources(targets, bundle_map=False)


def request(type_url: str, names: list[str], *, version: str = "", nonce: str = "", error: str = "") -> Any:
    req = pb.DiscoveryRequest(type_url=type_url, resource_names=names, version_info=version,
                              response_nonce=nonce, node=pb.Node(id="n1"))
    if error:
        req.error_detail.CopyFrom(pb.Status(code=3, message=error))
    return req


def served(**addresses: str) -> ServedResources:
    return ServedResources({}, {}).updated(peers(**addresses))


def test_first_request_gets_the_subscribed_resources_only() -> None:
    state = StreamState()
    responses, nack = state.on_request(request(CLUSTER_TYPE, ["a"]), served(a="10.0.0.1:1", b="10.0.0.2:1"))
    [response] = responses
    assert nack is None and state.node_id == "n1"
    assert (response.version_info, response.type_url) == ("1", CLUSTER_TYPE)
    assert [r.type_url for r in response.resources] == ["type.googleapis.com/envoy.config.cluster.v3.Cluster"]
    assert response.nonce


def test_ack_settles_and_sends_nothing() -> None:
    state, now = StreamState(), served(a="10.0.0.1:1")
    [response], _ = state.on_request(request(CLUSTER_TYPE, ["a"]), now)
    assert not state.settled(now)
    responses, nack = state.on_request(request(CLUSTER_TYPE, ["a"], version="1", nonce=response.nonce), now)
    assert responses == [] and nack is None
    assert state.settled(now)


def test_nack_is_reported_and_not_answered_with_the_same_content() -> None:
    state, now = StreamState(), served(a="10.0.0.1:1")
    [response], _ = state.on_request(request(CLUSTER_TYPE, ["a"]), now)
    responses, nack = state.on_request(request(CLUSTER_TYPE, ["a"], nonce=response.nonce, error="bad cluster"), now)
    assert responses == []
    assert nack is not None and (nack.type_url, nack.version, nack.message, nack.node_id) == (
        CLUSTER_TYPE, "1", "bad cluster", "n1")
    assert not state.settled(now)
    fixed = now.updated(peers(a="10.0.0.9:1"))
    [again] = state.on_update(fixed)  # a change is sent again
    assert again.version_info == "2" and again.nonce != response.nonce


def test_stale_nonces_are_ignored() -> None:
    state, now = StreamState(), served(a="10.0.0.1:1", b="10.0.0.2:1")
    [first], _ = state.on_request(request(CLUSTER_TYPE, ["a"]), now)
    [second] = state.on_update(now.updated(peers(a="10.0.0.3:1", b="10.0.0.2:1")))
    stale, nack = state.on_request(request(CLUSTER_TYPE, ["a", "b"], nonce=first.nonce, error="old"), now)
    assert stale == [] and nack is None  # answers the older response: ignored
    newer = now.updated(peers(a="10.0.0.3:1", b="10.0.0.2:1"))
    [both], _ = state.on_request(request(CLUSTER_TYPE, ["a", "b"], version="2", nonce=second.nonce), newer)
    assert len(both.resources) == 2  # the subscription change rides on the ACK of the newest response


def test_updates_reach_only_streams_whose_resources_changed() -> None:
    state, now = StreamState(), served(a="10.0.0.1:1", b="10.0.0.2:1")
    [response], _ = state.on_request(request(CLUSTER_TYPE, ["a"]), now)
    state.on_request(request(CLUSTER_TYPE, ["a"], version="1", nonce=response.nonce), now)
    only_b = now.updated(peers(a="10.0.0.1:1", b="10.0.0.9:1"))
    assert only_b.versions[CLUSTER_TYPE] == "2"
    assert state.on_update(only_b) == []
    removed = only_b.updated(peers(b="10.0.0.9:1"))
    [deletion] = state.on_update(removed)  # SotW: a response without "a" deletes it
    assert list(deletion.resources) == []


async def test_the_server_pushes_changes_and_records_nacks() -> None:
    directory = short_tmpdir()
    socket = directory / "ads.sock"
    async with AdsServer(socket, peers(a="10.0.0.1:1")) as ads:
        async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
            call = channel.stream_stream(
                f"/{ADS_SERVICE}/StreamAggregatedResources",
                request_serializer=pb.DiscoveryRequest.SerializeToString,
                response_deserializer=pb.DiscoveryResponse.FromString,
            )()
            await call.write(request(LISTENER_TYPE, ["a"]))
            first = await asyncio.wait_for(call.read(), 5)
            assert (first.type_url, first.version_info, len(first.resources)) == (LISTENER_TYPE, "1", 1)
            await call.write(request(LISTENER_TYPE, ["a"], version="1", nonce=first.nonce))
            assert await ads.wait_settled(5)
            await call.write(request(CLUSTER_TYPE, ["a"]))
            cluster = await asyncio.wait_for(call.read(), 5)
            await call.write(request(CLUSTER_TYPE, ["a"], nonce=cluster.nonce, error="refused"))
            assert not await ads.wait_settled(0.2)
            [nack] = ads.nacks
            assert nack.message == "refused" and nack.type_url == CLUSTER_TYPE
            assert ads.set_resources(peers(a="10.0.0.7:1"))  # from any thread; here the loop's
            pushed = await asyncio.wait_for(call.read(), 5)
            assert (pushed.type_url, pushed.version_info) == (CLUSTER_TYPE, "2")
            await call.write(request(CLUSTER_TYPE, ["a"], version="2", nonce=pushed.nonce))
            assert await ads.wait_settled(5)
            assert ads.stream_count == 1
            assert not ads.set_resources(peers(a="10.0.0.7:1"))  # same content: no new version
            call.cancel()
    assert not ads.serving
    shutil.rmtree(directory)
