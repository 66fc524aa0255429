"""xDS scenarios, one per process: ``python -m tests.support.xds_scenarios NAME [JSON-ARGS]``.

Each scenario opens real ``xds:///`` channels through meshnode's control
plane (or, for the pins of gRPC behaviour, through its public building
blocks with hand-made resources) and returns a JSON-able dict; see
tests/support/xds.py for the runner and tests/test_xds_*.py for what is
asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental
from cryptography import x509

from meshnode.devagent.ca import DevCA
from meshnode.errors import MeshnodeError
from meshnode.identity.snapshot import IdentitySnapshot, certs_pem
from meshnode.spiffeid import parse_spiffe_id
from meshnode.xds import PeerTarget, XdsControlPlane
from meshnode.xds import bootstrap as xboot
from meshnode.xds import resources as xres
from meshnode.xds.ads import AdsServer
from meshnode.xds.credentials import channel_credentials, verify_nothing_roots
from meshnode.xds.files import RuntimeDir, spiffe_bundle_map
from meshnode.xds.v3 import envoy_pb2 as pb
from meshnode.xds.v3 import pack, unpack
from tests.support.federation import atomic_write
from tests.support.xds import (
    HOUR,
    METHOD,
    RawCA,
    WhoServer,
    attempt,
    pem_key,
    poll,
    public,
    snapshot_of,
    svid_pems,
    who,
)

Scenario = Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {}

TD = "example.org"
CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"


def scenario(func: Scenario) -> Scenario:
    SCENARIOS[func.__name__.replace("_", "-")] = func
    return func


def peer(address: str, spiffe_id: str) -> PeerTarget:
    return PeerTarget(address, parse_spiffe_id(spiffe_id))


async def call_peer(cp: XdsControlPlane, name: str) -> dict[str, Any]:
    """One call on a new channel; a failure carries meshnode's explanation."""
    async with grpc.aio.secure_channel(cp.target(name), cp.channel_credentials()) as channel:
        outcome = await attempt(channel)
    if not outcome["ok"]:
        outcome["explained"] = cp.explain(name, outcome["error"])
    return public(outcome)


# -- verification ---------------------------------------------------------------


@scenario
async def verify(args: dict[str, Any]) -> dict[str, Any]:
    """Who the client accepts: exact SPIFFE ID, within the peer's own trust domain."""
    ca, other = DevCA(TD), DevCA("other.org")
    rogue_other = RawCA("a CA of other.org")  # in other.org's bundle, claims example.org IDs
    snap = snapshot_of(ca, CLIENT_ID, {"other.org": (*other.bundle, rogue_other.cert)})
    roots = certs_pem(ca.bundle)
    presented = {
        "uri-only": svid_pems(ca, SERVER_ID),
        "other-id": svid_pems(ca, "spiffe://example.org/other"),
        "case-variant": svid_pems(ca, "spiffe://example.org/SERVER"),
        "trailing-dot": svid_pems(ca, "spiffe://example.org/server."),
        "foreign-claim": rogue_other.issue(uris=[SERVER_ID]),
        "other-td": svid_pems(other, "spiffe://other.org/server"),
        "no-bundle-td": svid_pems(DevCA("third.org"), "spiffe://third.org/server"),
    }
    expected = {name: SERVER_ID for name in presented}
    expected["other-td"] = "spiffe://other.org/server"
    expected["no-bundle-td"] = "spiffe://third.org/server"
    async with contextlib.AsyncExitStack() as stack:
        servers = {n: await stack.enter_async_context(WhoServer(n, k, c, roots))
                   for n, (k, c) in presented.items()}
        cp = XdsControlPlane("verify")
        cp.update_identity(snap)
        cp.set_peers({n: peer(s.address, expected[n]) for n, s in servers.items()})
        await stack.enter_async_context(cp)
        results = {n: await call_peer(cp, n) for n in servers}
        sync_reply = await asyncio.to_thread(_sync_call, cp.target("uri-only"), cp.channel_credentials())
        kept = grpc.aio.secure_channel(cp.target("other-td"), cp.channel_credentials())
        await who(kept)
        removed = ("other-id", "other-td")
        cp.set_peers({n: peer(s.address, expected[n]) for n, s in servers.items() if n not in removed})
        gone = await poll(lambda: _fails(kept), 5)
        after_removal = await attempt(kept)
        after_removal["explained"] = cp.explain("other-td", after_removal["error"])
        await kept.close()
        unknown = ""
        try:
            cp.target("other-id")
        except MeshnodeError as exc:
            unknown = f"{type(exc).__name__}: {exc}"
        files = sorted(p.name for p in cp.runtime_dir.iterdir())
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in cp.runtime_dir.iterdir() if p.is_file()}
        dir_mode = oct(cp.runtime_dir.stat().st_mode & 0o777)
        runtime_dir = cp.runtime_dir
    return {
        "results": results,
        "client_serial": snap.serial,
        "sync": sync_reply,
        "removed_peer_fails": gone,
        "after_removal": public(after_removal),
        "unknown_peer": unknown,
        "files": files,
        "modes": modes,
        "dir_mode": dir_mode,
        "runtime_dir_removed": not runtime_dir.exists(),
    }


def _sync_call(target: str, credentials: grpc.ChannelCredentials) -> dict[str, Any]:
    """A call on a sync (not grpc.aio) channel: xDS security works there too."""
    with grpc.secure_channel(target, credentials) as channel:
        reply: dict[str, Any] = json.loads(channel.unary_unary(METHOD)(b"", timeout=5))
    return reply


# -- pins of gRPC behaviour (building blocks, hand-made resources) --------------------


def _with_validation(cluster: Any, change: Callable[[Any], None]) -> Any:
    tls = unpack(cluster.transport_socket.typed_config, pb.UpstreamTlsContext)
    change(tls.common_tls_context.validation_context)
    cluster.transport_socket.typed_config.CopyFrom(pack(tls))
    return cluster


@scenario
async def pins(args: dict[str, Any]) -> dict[str, Any]:
    """gRPC behaviour meshnode designs around; a change after an upgrade shows up here."""
    ca, rogue = DevCA(TD), RawCA("a CA of example.org that writes DNS SANs freely")
    snap = snapshot_of(ca, CLIENT_ID, {TD: (*ca.bundle, rogue.cert)})
    roots = certs_pem(ca.bundle)
    presented = {
        "exact-vs-case-variant": svid_pems(ca, "spiffe://example.org/SERVER"),
        "exact-vs-trailing-dot": svid_pems(ca, "spiffe://example.org/server."),
        "regex-vs-dns-san-trap": rogue.issue(uris=["spiffe://example.org/evil"], dns=[SERVER_ID]),
        "typed-matcher-only-vs-other-id": svid_pems(ca, "spiffe://example.org/other"),
        "static-cluster": svid_pems(ca, SERVER_ID),
    }
    with RuntimeDir("pins") as rdir:
        rdir.write_identity(snap, [TD], bundle_map=False, placeholder=verify_nothing_roots())
        boot = xboot.Bootstrap("pins", rdir.socket_path, rdir.identity_path, {TD: rdir.bundle_path(TD)})
        token = xboot.install(boot, "pins")
        async with contextlib.AsyncExitStack() as stack:
            servers = {n: await stack.enter_async_context(WhoServer(n, k, c, roots))
                       for n, (k, c) in presented.items()}
            plain = grpc.aio.server()
            plain_calls: list[int] = []

            async def plain_who(request: bytes, context: Any) -> bytes:
                plain_calls.append(1)
                return b'{"server": "plaintext"}'

            plain.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
                "meshnode.test.Who", {"Who": grpc.unary_unary_rpc_method_handler(plain_who)})])
            plain_port = plain.add_insecure_port("127.0.0.1:0")
            await plain.start()
            stack.push_async_callback(plain.stop, None)

            def cluster_for(name: str, address: str) -> Any:
                return xres.cluster(name, peer(address, SERVER_ID), identity_provider=xboot.IDENTITY_PROVIDER,
                                    roots_provider=xboot.roots_provider(TD, bundle_map=False))

            clusters = {n: cluster_for(n, s.address) for n, s in servers.items()}
            _with_validation(clusters["exact-vs-case-variant"], _exact_matcher)
            _with_validation(clusters["exact-vs-trailing-dot"], _exact_matcher)
            _with_validation(clusters["typed-matcher-only-vs-other-id"], _typed_matcher_only)
            clusters["static-cluster"].type = pb.Cluster.STATIC
            no_tls = {"no-tls": f"127.0.0.1:{plain_port}", "no-tls-vs-tls-server": servers["static-cluster"].address}
            for name, address in no_tls.items():
                clusters[name] = cluster_for(name, address)
                clusters[name].ClearField("transport_socket")
            ads = AdsServer(rdir.socket_path, {
                xres.LISTENER_TYPE: {n: xres.listener(n) for n in clusters},
                xres.CLUSTER_TYPE: clusters,
            })
            await stack.enter_async_context(ads)
            results = {}
            for name in clusters:
                async with grpc.aio.secure_channel(f"xds:///{name}", channel_credentials()) as channel:
                    results[name] = public(await attempt(channel))
                    if name == "static-cluster":  # gRPC fails the call first, then sends its NACK
                        await poll(lambda: _true(bool(ads.nacks)), 5)
            plaintext_calls = len(plain_calls)
            insecure = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
            async with grpc.aio.secure_channel("xds:///no-tls", insecure) as channel:
                results["no-tls-with-insecure-fallback"] = public(await attempt(channel))
            nacks = [{"type": n.type_url.rsplit(".", 1)[-1], "message": n.message} for n in ads.nacks]
        xboot.release(token)
    return {"results": results, "plaintext_calls": plaintext_calls, "nacks": nacks}


def _exact_matcher(validation: Any) -> None:
    del validation.match_subject_alt_names[:]
    validation.match_subject_alt_names.append(pb.StringMatcher(exact=SERVER_ID))


def _typed_matcher_only(validation: Any) -> None:
    del validation.match_subject_alt_names[:]
    validation.match_typed_subject_alt_names.append(pb.SubjectAltNameMatcher(
        san_type=pb.SubjectAltNameMatcher.URI, matcher=pb.StringMatcher(exact=SERVER_ID)))


# -- rotation under load ------------------------------------------------------------


@scenario
async def rotation(args: dict[str, Any]) -> dict[str, Any]:
    """SVID and CA rotation through the files under load: no failed call, no new channel."""
    rotations = int(args.get("rotations", 10))
    ca_rotation_at = int(args.get("ca_rotation_at", rotations // 2))
    workers = int(args.get("workers", 4))
    ca = DevCA(TD)
    client = snapshot_of(ca, CLIENT_ID)
    key, chain = svid_pems(ca, SERVER_ID)
    # Connections are recycled every ~0.3 s, so calls keep making new handshakes.
    options = [("grpc.max_connection_age_ms", 300), ("grpc.max_connection_age_grace_ms", 5000)]
    failures: list[str] = []
    calls = 0
    latencies: list[float] = []
    loaded: list[bool] = []  # per rotation: the load made calls once the new SVID was in use
    async with WhoServer("server", key, chain, certs_pem(ca.bundle), options=options) as server:
        cp = XdsControlPlane("rotation", bundle_map=bool(args.get("bundle_map")))
        cp.update_identity(client)
        cp.set_peers({"server": peer(server.address, SERVER_ID)})
        async with cp:
            channel = grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials())
            await who(channel)
            stop = asyncio.Event()

            async def load() -> None:
                nonlocal calls
                while not stop.is_set():
                    try:
                        await who(channel)
                        calls += 1
                    except grpc.aio.AioRpcError as err:
                        failures.append(f"{err.code().name}: {err.details()}")

            tasks = [asyncio.ensure_future(load()) for _ in range(workers)]
            for i in range(rotations):
                if i == ca_rotation_at:
                    # CA rotation, in the order that keeps every handshake verifiable:
                    # next CA into every bundle, wait until file watchers have it, then sign with it.
                    ca.prepare_rotation()
                    client = snapshot_of_same(client, ca)
                    cp.update_identity(client)
                    server.set_identity(key, chain, certs_pem(ca.bundle))
                    # a protocol step (the issuer's propagation delay), not a sync point of the test
                    await asyncio.sleep(xboot.REFRESH_INTERVAL_SECONDS + 0.5)
                    ca.activate_next()
                await asyncio.sleep(random.uniform(0, 1))  # no phase lock with the 1 s file watcher
                client = snapshot_of(ca, CLIENT_ID)
                key, chain = svid_pems(ca, SERVER_ID)
                pushed = time.monotonic()
                cp.update_identity(client)
                server.set_identity(key, chain, certs_pem(ca.bundle))
                latencies.append(await _first_handshake_with(cp, client.serial, pushed))
                since = calls
                loaded.append(await poll(lambda: _true(calls > since), 30))  # noqa: B023 (awaited here)
            new_ca = ca.ca_certificate.subject
            from_new_ca = _issuer(chain) == new_ca and _issuer(client.chain_pem) == new_ca
            ca.retire_previous()  # the old CA leaves every bundle; handshakes keep working
            client = snapshot_of_same(client, ca)
            cp.update_identity(client)
            server.set_identity(key, chain, certs_pem(ca.bundle))
            await asyncio.sleep(xboot.REFRESH_INTERVAL_SECONDS + 0.5)  # let the load run on the retired bundle
            await _first_handshake_with(cp, client.serial, time.monotonic())
            stop.set()
            await asyncio.gather(*tasks)
            final = await who(channel)
            await channel.close()
    return {
        "rotations": rotations,
        "calls": calls,
        "failures": failures[:5],
        "failed": len(failures),
        "latencies": latencies,
        "loaded": loaded,
        "serials_seen": len({serial for _, serial in server.calls}),
        "final_serial_is_latest": final["client_serial"] == client.serial,
        "svids_from_new_ca": from_new_ca,
        "ca_rotated": ca_rotation_at < rotations,
    }


def _issuer(pem: bytes) -> Any:
    return x509.load_pem_x509_certificate(pem).issuer


def snapshot_of_same(snap: IdentitySnapshot, ca: DevCA) -> IdentitySnapshot:
    """The same SVID with ``ca``'s current bundle."""
    return IdentitySnapshot(snap.spiffe_id, snap.chain, snap.private_key, {ca.trust_domain: ca.bundle})


async def _first_handshake_with(cp: XdsControlPlane, serial: str, pushed: float, timeout: float = 30.0) -> float:
    """Seconds from the push until a fresh connection (own subchannel: a new handshake) presents ``serial``."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    deadline = pushed + timeout
    while time.monotonic() < deadline:
        async with grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials(),
                                           options=options) as fresh:
            reply = await who(fresh)
        if reply["client_serial"] == serial:
            return time.monotonic() - pushed
        await asyncio.sleep(0.01)
    raise AssertionError(f"no handshake with serial {serial} within {timeout}s")


@scenario
async def push_rotation(args: dict[str, Any]) -> dict[str, Any]:
    """Rotations pushed as a fresh certificate provider slot, gRPC's re-read of the files every
    ``refresh_interval`` seconds: does each new SVID reach the open channel and a fresh connection?

    The server never ends a connection (no max_connection_age), so the open channel makes a new
    handshake only when the control plane makes it. With ``settle``, after the last rotation the
    scenario waits for the Clusters to go home and for calls on the connections made then.
    """
    rotations = int(args.get("rotations", 4))
    ca_rotation_at = int(args.get("ca_rotation_at", rotations))
    ca = DevCA(TD)
    first_ca = ca.ca_certificate.subject
    client = snapshot_of(ca, CLIENT_ID)
    key, chain = svid_pems(ca, SERVER_ID)
    failures: list[str] = []
    each: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    async with WhoServer("server", key, chain, certs_pem(ca.bundle)) as server:
        cp = XdsControlPlane("push", bundle_map=True, refresh_interval=int(args["refresh_interval"]))
        cp.update_identity(client)
        cp.set_peers({"server": peer(server.address, SERVER_ID)})
        async with cp:
            assert cp.bootstrap is not None
            providers = json.loads(cp.bootstrap.json)["certificate_providers"].values()
            out["refresh_intervals"] = sorted({p["config"]["refresh_interval"] for p in providers})
            channel = grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials())
            await who(channel)
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    try:
                        await who(channel)
                    except grpc.aio.AioRpcError as err:
                        failures.append(f"{err.code().name}: {err.details()}")

            def seen(serial: str) -> Callable[[], Coroutine[Any, Any, bool]]:
                return lambda: _true(any(s == serial for _, s in server.calls))

            tasks = [asyncio.ensure_future(load()) for _ in range(4)]
            for i in range(rotations):
                if i == ca_rotation_at:  # the next CA into every bundle (a rotation too), then it signs
                    ca.prepare_rotation()
                    client = snapshot_of_same(client, ca)
                    server.set_identity(key, chain, certs_pem(ca.bundle))
                    cp.update_identity(client)
                    await cp.wait_synced()
                    ca.activate_next()
                client = snapshot_of(ca, CLIENT_ID)
                key, chain = svid_pems(ca, SERVER_ID)
                server.set_identity(key, chain, certs_pem(ca.bundle))
                slot = cp.slot
                cp.update_identity(client)
                on_channel = await poll(seen(client.serial), 30)  # only the load's calls so far
                each.append({"slot": [slot, cp.slot], "on_channel": on_channel,
                             "fresh_connection": await _handshakes_with(cp, client.serial, 30)})
            if args.get("settle"):
                out["home"] = await poll(lambda: _true(cp.slot == 0), 30)
                await cp.wait_synced()
                settled = len(server.calls)
                out["calls_after_home"] = await poll(lambda: _true(len(server.calls) > settled + 200), 30)
                out["serials_after_home"] = sorted({s for _, s in server.calls[settled:]})
            stop.set()
            await asyncio.gather(*tasks)
            await channel.close()
    signer = _issuer(client.chain_pem)
    return {**out, "each": each, "failed": len(failures), "failures": failures[:5], "latest": client.serial,
            "calls": len(server.calls), "ca_rotated": signer == ca.ca_certificate.subject != first_ca}


async def _handshakes_with(cp: XdsControlPlane, serial: str, timeout: float) -> bool:
    """Whether a fresh connection (own subchannel: a new handshake) presents ``serial`` within ``timeout``."""
    try:
        await _first_handshake_with(cp, serial, time.monotonic(), timeout)
    except AssertionError:
        return False
    return True


# -- the control plane stopping ---------------------------------------------------


@scenario
async def ads_restart(args: dict[str, Any]) -> dict[str, Any]:
    ca = DevCA(TD)
    key, chain = svid_pems(ca, SERVER_ID)
    roots = certs_pem(ca.bundle)
    out: dict[str, Any] = {}
    async with WhoServer("one", key, chain, roots) as one, WhoServer("two", key, chain, roots) as two:
        cp = XdsControlPlane("restart", restart_delay=2.0, check_interval=0.3)
        cp.update_identity(snapshot_of(ca, CLIENT_ID))
        cp.set_peers({"server": peer(one.address, SERVER_ID)})
        async with cp:
            channel = grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials())
            out["before"] = (await who(channel))["server"]
            await cp.ads.stop()  # the failure: the ADS server is gone (restart comes after 2 s)
            out["down_existing_channel"] = public(await attempt(channel))
            async with grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials()) as fresh:
                out["down_new_channel"] = public(await attempt(fresh))
            out["down_serving"] = cp.ads.serving
            out["restarted"] = await poll(lambda: _true(cp.restarts >= 1), 10)
            cp.set_peers({"server": peer(two.address, SERVER_ID)})  # an update after the restart
            out["update_after_restart"] = await poll(lambda: _answers(channel, "two"), 10)
            cp.ads.socket_path.unlink()  # the other failure: someone removed the socket
            out["restarted_after_unlink"] = await poll(lambda: _true(cp.restarts >= 2), 10)
            cp.set_peers({"server": peer(one.address, SERVER_ID)})
            out["update_after_unlink"] = await poll(lambda: _answers(channel, "one"), 10)
            await cp.restart_ads()  # the public restart: immediate
            cp.set_peers({"server": peer(two.address, SERVER_ID)})
            out["update_after_restart_ads"] = await poll(lambda: _answers(channel, "two"), 10)
            out["synced"] = await cp.wait_synced(5)
            out["restarts"] = cp.restarts
            await channel.close()
    return out


async def _true(value: bool) -> bool:
    return value


async def _answers(channel: grpc.aio.Channel, name: str) -> bool:
    outcome = await attempt(channel)
    return bool(outcome["ok"] and outcome["server"] == name)


# -- one bootstrap per process -------------------------------------------------------


@scenario
async def clash(args: dict[str, Any]) -> dict[str, Any]:
    ca = DevCA(TD)
    key, chain = svid_pems(ca, SERVER_ID)
    out: dict[str, Any] = {}

    def plane(name: str) -> XdsControlPlane:
        cp = XdsControlPlane(name)
        cp.update_identity(snapshot_of(ca, CLIENT_ID))
        cp.set_peers({"server": peer(server.address, SERVER_ID)})
        return cp

    async def refused(cp: XdsControlPlane) -> str:
        try:
            await cp.start()
        except MeshnodeError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await cp.close()
        return "started"

    async with WhoServer("server", key, chain, certs_pem(ca.bundle)) as server:
        async with plane("alpha") as alpha:
            out["alpha"] = await call_peer(alpha, "server")
            out["second_node"] = await refused(plane("beta"))
            os.environ[xboot.BOOTSTRAP_CONFIG_ENV] = '{"xds_servers": [{"server_uri": "dns:///elsewhere:1"}]}'
            try:
                alpha.target("server")
                out["overwritten"] = "accepted"
            except MeshnodeError as exc:
                out["overwritten"] = f"{type(exc).__name__}: {exc}"
            os.environ[xboot.BOOTSTRAP_CONFIG_ENV] = alpha.bootstrap.json if alpha.bootstrap else ""
        out["env_after_close"] = os.environ.get(xboot.BOOTSTRAP_CONFIG_ENV)
        os.environ[xboot.BOOTSTRAP_CONFIG_ENV] = '{"xds_servers": [{"server_uri": "dns:///elsewhere:1"}]}'
        out["foreign_config"] = await refused(plane("gamma"))
        del os.environ[xboot.BOOTSTRAP_CONFIG_ENV]
        os.environ[xboot.BOOTSTRAP_FILE_ENV] = "/etc/some-bootstrap.json"
        out["bootstrap_file"] = await refused(plane("delta"))
        del os.environ[xboot.BOOTSTRAP_FILE_ENV]
        async with plane("epsilon") as epsilon:  # after alpha closed, a new node may take over
            out["epsilon"] = await call_peer(epsilon, "server")
    return out


@scenario
async def node(args: dict[str, Any]) -> dict[str, Any]:
    """One node of the two-process test: serve, then call the other node through xDS."""
    files = {k: Path(v).read_bytes() for k, v in args["files"].items()}
    async with WhoServer(args["name"], files["key"], files["chain"], files["roots"]) as server:
        print(f"ADDRESS {server.address}", flush=True)
        other = sys.stdin.readline().strip()
        cp = XdsControlPlane(args["name"])
        cp.update_identity(_snapshot_from_files(files))
        cp.set_peers({"other": peer(other, args["peer_id"])})
        async with cp:
            channel = grpc.aio.secure_channel(cp.target("other"), cp.channel_credentials())
            reply: dict[str, Any] = {}

            async def reach() -> bool:  # the other node may still be starting
                outcome = public(await attempt(channel))
                reply.update(outcome)
                return bool(outcome["ok"])

            reached = await poll(reach, 20, interval=0.1)
            called = await poll(lambda: _true(len(server.calls) > 0), 20)  # stay up until called
            await channel.close()
            bootstrap = cp.bootstrap.json if cp.bootstrap else ""
    return {"reached": reached, "reply": reply, "was_called": called, "bootstrap": bootstrap}


async def _ok(channel: grpc.aio.Channel) -> bool:
    return bool((await attempt(channel))["ok"])


async def _fails(channel: grpc.aio.Channel) -> bool:
    return not (await attempt(channel))["ok"]


def _snapshot_from_files(files: dict[str, bytes]) -> Any:
    from meshnode.identity.x509svid import build_snapshot, load_pem_certs, load_pem_key

    chain = load_pem_certs(files["chain"], "chain")
    roots = load_pem_certs(files["roots"], "roots")
    return build_snapshot(chain, load_pem_key(files["key"], "key"), {TD: tuple(roots)})


# -- the A87 bundle map ------------------------------------------------------------


@scenario
async def bundle_map(args: dict[str, Any]) -> dict[str, Any]:
    """The node's mode: one A87 map per peer trust domain, the probe at start, bundles that come and go."""
    ca, other, third = DevCA(TD), DevCA("other.org"), DevCA("third.org")
    rogue_other = RawCA("a CA of other.org")
    snap = snapshot_of(ca, CLIENT_ID, {"other.org": (*other.bundle, rogue_other.cert)})
    roots = certs_pem(ca.bundle)
    presented = {
        "own-td": (svid_pems(ca, SERVER_ID), SERVER_ID),
        "other-td": (svid_pems(other, "spiffe://other.org/server"), "spiffe://other.org/server"),
        "foreign-claim": (rogue_other.issue(uris=[SERVER_ID]), SERVER_ID),
        # other.org's CA, an ID of its own trust domain, and a DNS SAN spelled like the example.org peer's ID
        "cross-td-dns-san": (rogue_other.issue(uris=["spiffe://other.org/evil"], dns=[SERVER_ID]), SERVER_ID),
        "other-id": (svid_pems(ca, "spiffe://example.org/other"), SERVER_ID),
        "third-td": (svid_pems(third, "spiffe://third.org/server"), "spiffe://third.org/server"),
    }
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        servers = {n: await stack.enter_async_context(WhoServer(n, k, c, roots))
                   for n, ((k, c), _) in presented.items()}
        cp = XdsControlPlane("bundle-map", bundle_map=True)
        cp.update_identity(snap)
        cp.set_peers({n: peer(servers[n].address, sid) for n, (_, sid) in presented.items()})
        try:
            await stack.enter_async_context(cp)
        except MeshnodeError as exc:
            return {"start": f"{type(exc).__name__}: {exc}"}
        out["start"] = "started"
        out["probe_ran"] = cp.probe_seconds is not None
        out["env_flag"] = os.environ.get(xboot.SPIFFE_BUNDLE_MAP_ENV)
        out["results"] = {n: await call_peer(cp, n) for n in servers}
        out["files"] = sorted(p.name for p in cp.runtime_dir.iterdir())
        out["maps"] = {td: sorted(json.loads((cp.runtime_dir / f"bundles.{td}.json").read_text())["trust_domains"])
                       for td in ("example.org", "other.org", "third.org")}
        out["served"] = cp.ads.resource_names
        # third.org's bundle arrives while the channel is open: no restart, no new channel
        channel = grpc.aio.secure_channel(cp.target("third-td"), cp.channel_credentials(),
                                          options=[("grpc.use_local_subchannel_pool", 1)])
        cp.update_identity(snapshot_of(ca, CLIENT_ID, {"other.org": other.bundle, "third.org": third.bundle}))
        out["bundle_added"] = await poll(lambda: _ok(channel), 10)
        await channel.close()
        # ... and goes away: new handshakes fail
        cp.update_identity(snapshot_of(ca, CLIENT_ID, {"other.org": other.bundle}))

        async def fresh_fails() -> bool:
            async with grpc.aio.secure_channel(cp.target("third-td"), cp.channel_credentials(),
                                               options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
                return await _fails(fresh)

        out["bundle_removed"] = await poll(fresh_fails, 10)
        out["after_removal"] = await call_peer(cp, "third-td")
        # a trust domain the node did not know at start
        fourth = DevCA("fourth.org")
        try:
            cp.set_peers({"late": peer(servers["own-td"].address, "spiffe://fourth.org/server")})
            out["late_td"] = "accepted"
        except MeshnodeError as exc:
            out["late_td"] = f"{type(exc).__name__}: {exc}"
        del fourth
    return out


# -- gRPC's own A87 behaviour, without meshnode's control plane ----------------------------


@scenario
async def a87_pins(args: dict[str, Any]) -> dict[str, Any]:
    """What this grpcio does with bundle maps: ``args["mode"]`` picks the bootstrap and the variable.

    ``map``: a provider with only a map; ``map+flat``: a map and a flat ca_certificate_file holding
    every trust domain's roots, beside it. ``flag``: the value of GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE
    (None: unset), set after gRPC has served and dialled (it is read per new xDS client, not at start).
    """
    mode, flag = args["mode"], args.get("flag")
    ca, other = DevCA(TD), DevCA("other.org")
    rogue_own, rogue_other = RawCA("a CA of example.org"), RawCA("a CA of other.org")
    snap = snapshot_of(ca, CLIENT_ID)
    bundles = {TD: (*ca.bundle, rogue_own.cert), "other.org": (*other.bundle, rogue_other.cert)}
    presented = {
        "own-td": (svid_pems(ca, SERVER_ID), SERVER_ID),
        "foreign-claim": (rogue_other.issue(uris=[SERVER_ID]), SERVER_ID),
        "cross-td-dns-san": (rogue_other.issue(uris=["spiffe://other.org/evil"], dns=[SERVER_ID]), SERVER_ID),
        "dns-san-only": (rogue_own.issue(dns=[SERVER_ID]), SERVER_ID),  # no URI SAN: not an X509-SVID
    }
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        servers = {n: await stack.enter_async_context(WhoServer(n, k, c, certs_pem(ca.bundle)))
                   for n, ((k, c), _) in presented.items()}
        async with grpc.aio.secure_channel(servers["own-td"].address, grpc.ssl_channel_credentials(
                certs_pem(ca.bundle), snap.key_pem, snap.chain_pem),
                options=[("grpc.ssl_target_name_override", "x")]) as plain:
            await attempt(plain)  # gRPC is up and has dialled before the variable is set
        rdir = stack.enter_context(RuntimeDir("a87-pins"))
        atomic_write(rdir.path / "bundles.pins.json", spiffe_bundle_map(bundles))
        atomic_write(rdir.path / "bundle.flat.pem", certs_pem(bundles[TD]) + certs_pem(bundles["other.org"]))
        atomic_write(rdir.path / "svid.pem", snap.key_pem + snap.chain_pem)
        roots = {"spiffe_bundle_map_file": str(rdir.path / "bundles.pins.json"), "refresh_interval": "1s"}
        if mode == "map+flat":
            roots["ca_certificate_file"] = str(rdir.path / "bundle.flat.pem")
        doc = json.loads(xboot.Bootstrap("pins", rdir.socket_path, rdir.identity_path).json)
        doc["certificate_providers"]["roots"] = {"plugin_name": "file_watcher", "config": roots}
        if flag is not None:
            os.environ[xboot.SPIFFE_BUNDLE_MAP_ENV] = flag
        os.environ[xboot.BOOTSTRAP_CONFIG_ENV] = json.dumps(doc)
        targets = {n: peer(servers[n].address, sid) for n, (_, sid) in presented.items()}
        clusters = {n: xres.cluster(n, t, roots_provider="roots", identity_provider=xboot.IDENTITY_PROVIDER)
                    for n, t in targets.items()}
        await stack.enter_async_context(AdsServer(rdir.socket_path, {
            xres.LISTENER_TYPE: {n: xres.listener(n) for n in targets}, xres.CLUSTER_TYPE: clusters}))
        for name in targets:
            async with grpc.aio.secure_channel(f"xds:///{name}", channel_credentials()) as channel:
                outcome = public(await attempt(channel))
            out[name] = {"ok": outcome["ok"], "details": outcome.get("details", "")}
        if mode == "map" and flag == "true":
            out["bad-key"] = await _map_with_a_bad_key(rdir, bundles)
        del os.environ[xboot.BOOTSTRAP_CONFIG_ENV]
    return out


async def _map_with_a_bad_key(rdir: RuntimeDir, bundles: dict[str, Any]) -> dict[str, Any]:
    """One key gRPC does not take (a JWT key, no x5c) in the map: every handshake fails, also after a good map."""
    doc = json.loads(spiffe_bundle_map(bundles))
    doc["trust_domains"]["other.org"]["keys"].append({"kty": "EC", "use": "jwt-svid", "kid": "k", "crv": "P-256",
                                                      "x": "AA", "y": "AA"})
    atomic_write(rdir.path / "bundles.pins.json", json.dumps(doc).encode())

    async def own_fails() -> bool:
        async with grpc.aio.secure_channel("xds:///own-td", channel_credentials(),
                                           options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            return await _fails(channel)

    failed = await poll(own_fails, 10)
    async with grpc.aio.secure_channel("xds:///own-td", channel_credentials(),
                                       options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        details = public(await attempt(channel)).get("details", "")
    atomic_write(rdir.path / "bundles.pins.json", spiffe_bundle_map(bundles))

    async def own_ok() -> bool:
        async with grpc.aio.secure_channel("xds:///own-td", channel_credentials(),
                                           options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            return await _ok(channel)

    return {"own_td_fails": failed, "details": details, "recovers": await poll(own_ok, 10)}


@scenario
async def a87_probe(args: dict[str, Any]) -> dict[str, Any]:
    """meshnode's start-up probe against what this grpcio really does (``args["mode"]`` as in a87-pins)."""
    from meshnode.xds import a87

    mode, flag = args["mode"], args.get("flag")
    kit = a87.probe_kit()
    snap = snapshot_of(DevCA(TD), CLIENT_ID)
    with RuntimeDir("a87-probe") as rdir:
        rdir.write_probe(kit.map_document)
        atomic_write(rdir.path / "bundle.flat.pem", certs_pem(kit.roots))
        atomic_write(rdir.path / "svid.pem", snap.key_pem + snap.chain_pem)
        doc = json.loads(xboot.Bootstrap("probe", rdir.socket_path, rdir.identity_path).json)
        config = {"spiffe_bundle_map_file": str(rdir.probe_path), "refresh_interval": "1s"}
        if mode == "map+flat":
            config["ca_certificate_file"] = str(rdir.path / "bundle.flat.pem")
        doc["certificate_providers"][xboot.PROBE_PROVIDER] = {"plugin_name": "file_watcher", "config": config}
        if flag is not None:
            os.environ[xboot.SPIFFE_BUNDLE_MAP_ENV] = flag
        os.environ[xboot.BOOTSTRAP_CONFIG_ENV] = json.dumps(doc)
        async with AdsServer(rdir.socket_path) as ads:
            try:
                seconds = await a87.probe_bundle_maps(kit, ads.set_resources, timeout=float(args.get("timeout", 20)))
                result = f"passed in {seconds:.3f} s"
            except MeshnodeError as exc:
                result = f"{type(exc).__name__}: {exc}"
        del os.environ[xboot.BOOTSTRAP_CONFIG_ENV]
    return {"result": result}


# -- measurements ------------------------------------------------------------------


@scenario
async def bench(args: dict[str, Any]) -> dict[str, Any]:
    """First-call latency and per-call cost: xds:/// vs a plain ssl channel, interleaved rounds.

    ``xds-cold``: the first channel ever to a target (gRPC makes its xDS client: ADS stream, Listener,
    Cluster, certificate files); ``xds-warm``: a new channel to a target that has an open channel;
    ``ssl``: a new plain ssl channel (DNS-name verification). Every new channel gets its own
    connection (local subchannel pool), so each first call includes a TLS handshake.
    """
    rounds, calls = int(args.get("rounds", 20)), int(args.get("calls", 500))
    ca = DevCA(TD)
    snap = snapshot_of(ca, CLIENT_ID)
    key, chain = svid_pems(ca, SERVER_ID)
    dns_key, dns_chain = _svid_with_dns(ca, "server.test")
    fresh = [("grpc.use_local_subchannel_pool", 1)]
    async with WhoServer("server", key, chain, certs_pem(ca.bundle)) as server, \
            WhoServer("dns", dns_key, dns_chain, certs_pem(ca.bundle)) as dns_server:
        cp = XdsControlPlane("bench")
        cp.update_identity(snap)
        cp.set_peers({f"s{i}": peer(server.address, SERVER_ID) for i in range(rounds + 1)})
        async with cp:
            ssl_creds = grpc.ssl_channel_credentials(certs_pem(ca.bundle), snap.key_pem, snap.chain_pem)
            keeper = grpc.aio.secure_channel(cp.target(f"s{rounds}"), cp.channel_credentials())
            await who(keeper)

            def make(kind: str, i: int) -> grpc.aio.Channel:
                if kind == "xds-cold":
                    return grpc.aio.secure_channel(cp.target(f"s{i}"), cp.channel_credentials(), options=fresh)
                if kind == "xds-warm":
                    return grpc.aio.secure_channel(cp.target(f"s{rounds}"), cp.channel_credentials(), options=fresh)
                return grpc.aio.secure_channel(dns_server.address, ssl_creds,
                                               options=[*fresh, ("grpc.ssl_target_name_override", "server.test")])

            kinds = ("xds-cold", "xds-warm", "ssl")
            first: dict[str, list[float]] = {k: [] for k in kinds}
            wall: dict[str, list[float]] = {k: [] for k in kinds}
            cpu: dict[str, list[float]] = {k: [] for k in kinds}
            for i in range(rounds):
                for kind in kinds:
                    start = time.perf_counter()
                    channel = make(kind, i)
                    await who(channel)
                    first[kind].append(time.perf_counter() - start)
                    method = channel.unary_unary(METHOD)
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    for _ in range(calls):
                        await method(b"", timeout=5)
                    wall[kind].append((time.perf_counter() - wall0) / calls)
                    cpu[kind].append((time.process_time() - cpu0) / calls)
                    await channel.close()
            await keeper.close()

    def ms(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1000, 3),
                "p90_ms": round(ordered[max(int(len(ordered) * 0.9) - 1, 0)] * 1000, 3)}

    return {
        "rounds": rounds, "calls_per_round": calls,
        "first_call": {k: ms(v) for k, v in first.items()},
        "per_call_wall": {k: ms(v) for k, v in wall.items()},
        "per_call_process_cpu": {k: ms(v) for k, v in cpu.items()},
    }


def _svid_with_dns(ca: DevCA, name: str) -> tuple[bytes, bytes]:
    """An SVID with a DNS SAN, for the plain ssl channel (it verifies only DNS names)."""
    issued = ca.issue(SERVER_ID, HOUR, dns_names=(name,), map_dns=False)
    return pem_key(issued.private_key), certs_pem(issued.chain)


def main() -> None:
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result: dict[str, Any] = asyncio.run(SCENARIOS[name](args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
