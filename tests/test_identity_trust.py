"""Trust the certificate you serve, not the snapshot you were told about.

* Every identity update, from every source, must keep the trust domain the
  node runs in (and the configured SPIFFE ID): a refused update is counted,
  reported once, and the last good identity stays.
* Health follows the certificate the server credentials hand to new
  handshakes and the identity peers are called with, never a newer
  snapshot nobody serves; not-yet-valid SVIDs are re-checked when they
  become valid.

The node tests run a production node on a Workload API server that pushes
what the test hands it (tests/support/workload_api.py), over real mTLS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from meshnode.credentials import ServerCredentials, channel_credentials
from meshnode.devagent.ca import DevCA
from meshnode.identity.guard import GuardedSource, IdentityRules
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem, utcnow
from meshnode.identity.source import StaticSource
from meshnode.identity_state import IdentityState
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import issue_snapshot, short_tmpdir
from tests.support.logs import watch_logs
from tests.support.nodes import node_config
from tests.support.workload_api import FakeWorkloadApi, snapshot_response, svid_response

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
OTHER_BETA = "spiffe://other.org/node/beta"
HOUR = dt.timedelta(hours=1)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def ca() -> DevCA:
    return DevCA("example.org")


@pytest.fixture(scope="module")
def other_ca() -> DevCA:
    return DevCA("other.org")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = short_tmpdir("mn-trust-")
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def refused_counts(reader: InMemoryMetricReader) -> dict[str, float]:
    data = reader.get_metrics_data()
    out: dict[str, float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "meshnode.identity.updates_refused":
                    for p in metric.data.data_points:
                        assert isinstance(p, NumberDataPoint)
                        out[str((p.attributes or {})["error.type"])] = p.value
    return out


# -- the guard: every update, every source ---------------------------------------------------


def test_an_update_of_another_trust_domain_is_refused_counted_reported_once_and_the_last_good_kept(
    ca: DevCA, other_ca: DevCA
) -> None:
    reader = InMemoryMetricReader()
    first = issue_snapshot(ca, BETA)
    inner = StaticSource(first, description="workload-api unix:///agent.sock")
    with watch_logs("meshnode.identity") as logs:
        guard = GuardedSource(
            inner, IdentityRules("example.org"), first, meter_provider=MeterProvider(metric_readers=[reader])
        )
        seen: list[IdentitySnapshot] = []
        guard.subscribe(seen.append)
        foreign = issue_snapshot(other_ca, OTHER_BETA)
        inner.set(foreign)
        inner.set(foreign.with_generation(7))  # the same material again: the source drops it
        assert guard.current() is not None and guard.current().serial == first.serial
        assert seen == [] and refused_counts(reader) == {"trust_domain": 1}
        [line] = logs.messages("identity.update_refused")
        assert f"svid.serial={first.serial}" in line  # the identity the node keeps
        assert f"refused the SVID serial={foreign.serial} from workload-api unix:///agent.sock" in line
        assert f"{OTHER_BETA} is outside the trust domain 'example.org'" in line
        assert guard.last_refusal is not None and guard.last_refusal.kind == "trust_domain"
        inner.set(issue_snapshot(other_ca, OTHER_BETA))  # other content: counted and reported again
        assert refused_counts(reader) == {"trust_domain": 2} and len(logs.messages("update_refused")) == 2
        renewed = issue_snapshot(ca, BETA)
        inner.set(renewed)
    assert [s.serial for s in seen] == [renewed.serial] and guard.current().generation == 2
    assert guard.last_refusal is None
    guard.close()
    inner.close()


def test_the_spiffe_id_is_pinned_only_when_one_is_configured(ca: DevCA) -> None:
    reader = InMemoryMetricReader()
    first = issue_snapshot(ca, BETA)
    moved = issue_snapshot(ca, "spiffe://example.org/node/elsewhere")
    pinned_inner, free_inner = StaticSource(first), StaticSource(first)
    pinned = GuardedSource(pinned_inner, IdentityRules("example.org", parse_spiffe_id(BETA)), first,
                           meter_provider=MeterProvider(metric_readers=[reader]))
    free = GuardedSource(free_inner, IdentityRules("example.org"), first)
    pinned_inner.set(moved)
    free_inner.set(moved)
    assert str(pinned.current().spiffe_id) == BETA and refused_counts(reader) == {"spiffe_id": 1}
    assert pinned.last_refusal is not None and "not the configured [identity] spiffe_id" in pinned.last_refusal.message
    assert str(free.current().spiffe_id) == "spiffe://example.org/node/elsewhere"
    for source in (pinned, free, pinned_inner, free_inner):
        source.close()


# -- health from what is served ---------------------------------------------------------------


class FakeClock:
    """A clock a test moves by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def recorder(changes: list[bool]) -> Callable[[bool], Awaitable[None]]:
    async def on_health(serving: bool) -> None:
        changes.append(serving)

    return on_health


async def test_health_follows_the_served_certificate_not_a_newer_snapshot_nobody_serves(
    ca: DevCA, other_ca: DevCA
) -> None:
    served_first = issue_snapshot(ca, BETA, ttl=dt.timedelta(minutes=10))
    source = StaticSource(served_first)
    creds = ServerCredentials(source, {"example.org"})
    clock = FakeClock(utcnow())
    changes: list[bool] = []
    state = IdentityState(source, recorder(changes), served=creds, clock=clock)
    with watch_logs("meshnode") as logs:
        assert await state.evaluate() is True
        source.set(issue_snapshot(other_ca, OTHER_BETA, ttl=HOUR))  # no roots for example.org: not served
        assert creds.served.serial == served_first.serial and source.current().trust_domain == "other.org"
        clock.now = served_first.not_after
        assert await state.evaluate() is False  # the newer snapshot is valid, the served certificate is not
        [line] = logs.messages("health is NOT_SERVING")
        assert f"the served certificate serial={served_first.serial} expired at" in line
        assert "could not be served" in line
    assert changes == [True, False]
    await state.close()
    creds.close()
    source.close()


async def test_a_not_yet_valid_svid_is_rechecked_when_it_becomes_valid(ca: DevCA) -> None:
    snapshot = issue_snapshot(ca, BETA)
    source = StaticSource(snapshot)
    clock = FakeClock(snapshot.not_before - dt.timedelta(minutes=20))
    changes: list[bool] = []
    state = IdentityState(source, recorder(changes), clock=clock)
    with watch_logs("meshnode.identity") as logs:
        assert await state.evaluate() is False
        assert state.next_check == snapshot.not_before  # not an hour later
        assert "is not valid before" in logs.messages("NOT_SERVING")[0]
        clock.now = snapshot.not_before
        assert await state.evaluate() is True
        assert state.next_check is not None and state.next_check > clock.now
    assert changes == [False, True]
    await state.close()
    source.close()


async def test_the_watcher_wakes_at_not_before_by_itself(ca: DevCA) -> None:
    """Real timer: the SVID becomes valid 1 s after the watcher starts; health follows on its own."""
    snapshot = issue_snapshot(ca, BETA)
    source = StaticSource(snapshot)
    shift = (utcnow() - snapshot.not_before) + dt.timedelta(seconds=1)
    serving = asyncio.Queue[bool]()

    async def on_health(value: bool) -> None:
        serving.put_nowait(value)

    state = IdentityState(source, on_health, clock=lambda: utcnow() - shift)
    state.start()
    assert await asyncio.wait_for(serving.get(), 10) is False
    assert await asyncio.wait_for(serving.get(), 30) is True
    await state.close()
    source.close()


async def test_close_never_hangs_when_an_update_arrives_as_it_closes(ca: DevCA) -> None:
    """On Python 3.11 asyncio.wait_for swallows a cancel that meets a finished wake-up: the watcher
    kept running and Node.stop() waited for it forever when a rotation landed at shutdown.
    Every interleaving of "update" and "close" within a few loop steps must close."""
    snapshots = [issue_snapshot(ca, BETA) for _ in range(2)]
    stuck = []
    for settle in range(3):
        for delay in range(5):
            source = StaticSource(snapshots[0])
            state = IdentityState(source, recorder([]))
            state.start()
            for _ in range(settle):
                await asyncio.sleep(0)
            source.set(snapshots[1])
            for _ in range(delay):
                await asyncio.sleep(0)
            closing = asyncio.ensure_future(state.close())
            done, _ = await asyncio.wait({closing}, timeout=5)
            if not done:
                stuck.append((settle, delay))
            source.close()
    assert stuck == []


# -- a production node on a Workload API that pushes what it should not ------------------------


def production_config(api: FakeWorkloadApi, **identity: Any) -> Any:
    return node_config(
        "beta", mode="production", allow=[ALPHA],
        identity={"source": "workload-api", "socket": api.address, "trust_domain": "example.org",
                  "timeout": 5, **identity},
    )


async def health(node: Node, caller: IdentitySnapshot) -> int:
    """The gRPC health status a caller sees; -code for an RPC error."""
    creds = channel_credentials(caller, "example.org")
    options = [("grpc.ssl_target_name_override", dns_name_for(BETA))]
    async with grpc.aio.secure_channel(f"127.0.0.1:{node.port}", creds, options=options) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return int(reply.status)
        except grpc.aio.AioRpcError as err:
            return -int(err.code().value[0])


@pytest.mark.slow
async def test_a_foreign_svid_pushed_at_runtime_is_refused_and_health_ends_with_the_served_certificate(
    ca: DevCA, other_ca: DevCA, socket_dir: Path
) -> None:
    short = issue_snapshot(ca, BETA, ttl=dt.timedelta(seconds=8))
    caller = issue_snapshot(ca, ALPHA)
    with FakeWorkloadApi(socket_dir / "agent.sock", snapshot_response(short)) as api, \
            watch_logs("meshnode") as logs:
        async with Node(production_config(api)) as node:
            assert await health(node, caller) == SERVING
            foreign = issue_snapshot(other_ca, OTHER_BETA, ttl=HOUR)
            api.push(snapshot_response(foreign))
            [refused] = await asyncio.to_thread(logs.wait_for, "identity.update_refused")
            assert f"refused the SVID serial={foreign.serial} from workload-api {api.address}" in refused
            assert node.identity.serial == short.serial and str(node.spiffe_id) == BETA
            assert logs.messages("identity.rotated") == []
            # the served certificate expires; the refused one is valid for an hour, and must not count
            [lost] = await asyncio.to_thread(logs.wait_for, "health is NOT_SERVING", timeout=60)
            assert f"the served certificate serial={short.serial} expired at" in lost
            assert "its newest update was refused" in lost and "outside the trust domain" in lost
            assert node.serving is False
            # NOT_SERVING, or no handshake at all (TLS accepts a certificate up to its not-after second)
            assert await health(node, caller) in (NOT_SERVING, -grpc.StatusCode.UNAVAILABLE.value[0])
            renewed = issue_snapshot(ca, BETA, ttl=HOUR)
            api.push(snapshot_response(renewed))
            await asyncio.to_thread(logs.wait_for, "health is SERVING again")
            assert node.serving is True and node.identity.serial == renewed.serial
            assert await health(node, caller) == SERVING
        assert len(logs.messages("identity.update_refused")) == 1


def _bad_pushes(ca: DevCA, other_ca: DevCA) -> dict[str, tuple[Any, str]]:
    """Pushes a node must refuse after a good SVID: (response, what the log says)."""
    good = ca.issue(BETA, HOUR)
    other_key = ca.issue(BETA, HOUR).private_key
    foreign = other_ca.issue(OTHER_BETA, HOUR)
    moved = ca.issue("spiffe://example.org/node/elsewhere", HOUR)
    expired = ca.issue(BETA, -dt.timedelta(seconds=1))
    # [identity] spiffe_id selects among the SVIDs delivered: a push without it is rejected by the source
    not_delivered = f'no SVID for [identity] spiffe_id = "{BETA}"; it delivered 1 SVID: '
    return {
        "another trust domain": (
            svid_response(OTHER_BETA, foreign.chain, foreign.private_key, other_ca.bundle, {"example.org": ca.bundle}),
            not_delivered + f"{OTHER_BETA} (no hint)",
        ),
        "another SPIFFE ID than [identity] spiffe_id": (
            svid_response(str(moved.spiffe_id), moved.chain, moved.private_key, ca.bundle),
            not_delivered + "spiffe://example.org/node/elsewhere (no hint)",
        ),
        "a key that does not match the certificate": (
            svid_response(BETA, good.chain, other_key, ca.bundle),
            "the private key does not match the SVID certificate",
        ),
        "a bundle without the own trust domain's CA": (
            svid_response(BETA, good.chain, good.private_key, other_ca.bundle),
            "does not verify against the trust bundle",
        ),
        "an expired SVID": (
            svid_response(BETA, expired.chain, expired.private_key, ca.bundle),
            "outside its validity",
        ),
    }


BAD_PUSHES = [
    "another trust domain",
    "another SPIFFE ID than [identity] spiffe_id",
    "a key that does not match the certificate",
    "a bundle without the own trust domain's CA",
    "an expired SVID",
]


@pytest.mark.parametrize("push", BAD_PUSHES)
async def test_a_bad_push_keeps_the_last_good_identity_and_the_stream_keeps_working(
    push: str, ca: DevCA, other_ca: DevCA, socket_dir: Path
) -> None:
    first = issue_snapshot(ca, BETA)
    caller = issue_snapshot(ca, ALPHA)
    response, why = _bad_pushes(ca, other_ca)[push]
    with FakeWorkloadApi(socket_dir / "agent.sock", snapshot_response(first)) as api, \
            watch_logs("meshnode") as logs:
        async with Node(production_config(api, spiffe_id=BETA)) as node:
            api.push(response)
            api.push(response)  # an agent may push the same thing again: reported once
            [line] = await asyncio.to_thread(logs.wait_for, why)
            assert "keeping" in line  # ... the current SVID / serial=<first>
            assert node.identity.serial == first.serial and str(node.spiffe_id) == BETA
            assert await health(node, caller) == SERVING
            renewed = issue_snapshot(ca, BETA)
            api.push(snapshot_response(renewed))
            await asyncio.to_thread(logs.wait_for, f"svid.serial={renewed.serial}")  # identity.rotated
            assert node.identity.serial == renewed.serial
            assert await health(node, caller) == SERVING
        rotated = logs.messages("identity.rotated")
        assert len(rotated) == 1 and f"svid.serial={renewed.serial}" in rotated[0]
        assert len(logs.messages(why)) == 1  # the stream is ordered: both bad pushes came before the renewal


def write_svid_files(directory: Path, snapshot: IdentitySnapshot) -> dict[str, str]:
    """The PEM files spiffe-helper would write, each replaced atomically; returns [identity] keys."""
    files = {
        "cert": snapshot.chain_pem,
        "key": snapshot.key_pem,
        "bundle": certs_pem(snapshot.bundles[snapshot.trust_domain]),
    }
    for name, data in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.chmod(0o600)
        tmp.replace(directory / f"{name}.pem")
    return {name: str(directory / f"{name}.pem") for name in files}


@pytest.mark.parametrize("kind", ["files", "a source given to Node"])
async def test_every_source_is_held_to_the_trust_domain(
    kind: str, ca: DevCA, other_ca: DevCA, socket_dir: Path
) -> None:
    first = issue_snapshot(ca, BETA)
    foreign = issue_snapshot(other_ca, OTHER_BETA)
    given = StaticSource(first) if kind != "files" else None
    if given is None:
        identity = {"source": "files", "trust_domain": "example.org", **write_svid_files(socket_dir, first)}
        config = node_config("beta", mode="production", allow=[ALPHA], identity=identity)
    else:
        config = node_config("beta", allow=[ALPHA])
    with watch_logs("meshnode") as logs:
        async with Node(config, source=given) as node:
            if given is None:
                write_svid_files(socket_dir, foreign)
            else:
                given.set(foreign)
            [line] = await asyncio.to_thread(logs.wait_for, "identity.update_refused")
            assert f"{OTHER_BETA} is outside the trust domain 'example.org'" in line
            assert node.identity.serial == first.serial and node.serving is True
            assert logs.messages("identity.rotated") == []
    if given is not None:
        given.close()


async def test_without_a_configured_spiffe_id_a_new_path_in_the_trust_domain_is_taken(
    ca: DevCA, socket_dir: Path
) -> None:
    first = issue_snapshot(ca, BETA)
    moved = issue_snapshot(ca, "spiffe://example.org/node/beta-v2")
    with FakeWorkloadApi(socket_dir / "agent.sock", snapshot_response(first)) as api, \
            watch_logs("meshnode") as logs:
        async with Node(production_config(api)) as node:
            api.push(snapshot_response(moved))
            await asyncio.to_thread(logs.wait_for, "identity.rotated")
            assert str(node.spiffe_id) == "spiffe://example.org/node/beta-v2"

