"""XdsControlPlane: the node's embedded xDS control plane for spiffe-id peers.

```python
cp = XdsControlPlane("alpha")
cp.update_identity(snapshot)                  # and on every new snapshot
cp.set_peers({"beta": PeerTarget("10.0.0.2:7002", parse_spiffe_id("spiffe://example.org/beta"))})
async with cp:                                # start(): files, bootstrap, ADS server
    channel = grpc.aio.secure_channel(cp.target("beta"), cp.channel_credentials())
```

Lifecycle: identity and peers first, then :meth:`start`, which writes the
identity files, installs the process-wide bootstrap (refusing a clash) and
starts the ADS server with a supervisor that restarts it if it stops or its
socket disappears. While it is down gRPC keeps its cached configuration:
open channels, and new channels to targets that have an open channel, keep
working. :meth:`close` stops everything and removes the files; close the
channels before it.

Rotation: :meth:`update_identity` writes the new files into every
certificate provider slot, then serves the Clusters naming a fresh slot,
whose provider gRPC builds and which reads the new files at once; gRPC
makes new subchannels for the new Clusters, so the next calls run on new
handshakes with the new certificate within milliseconds, while calls in
flight finish on the old connections. Two refresh intervals later the
Clusters go back to the home slot (:mod:`meshnode.xds.slots` says why).
With ``slots=1`` the only way in is gRPC's re-read of the files (every
``refresh_interval``), and an open channel makes no new handshake until
its connection ends (the server's ``max_connection_age``).

Roots are per trust domain: one provider per trust domain in the
bootstrap, for the peers' trust domains and those of the snapshot's
bundles at :meth:`start`. With ``bundle_map=True`` (what nodes use) each
reads a SPIFFE bundle map of its trust domain alone (gRFC A87; the start
runs :mod:`meshnode.xds.a87`'s probe and refuses a gRPC that does not
apply the maps), else PEM roots. Either way a bundle that appears, changes
or goes away later reaches gRPC through the files, without a restart; a
peer in a trust domain the node did not know at :meth:`start` needs one
(gRPC reads certificate providers from the bootstrap).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import stat
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import grpc

from meshnode.config.targets import HostPort
from meshnode.errors import ClosedError, IdentityUnavailableError, PeerError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.xds import a87
from meshnode.xds import bootstrap as _bootstrap
from meshnode.xds.ads import AdsServer
from meshnode.xds.credentials import channel_credentials, verify_nothing_roots
from meshnode.xds.files import RuntimeDir
from meshnode.xds.resources import (
    PeerSpec,
    PeerTarget,
    Resources,
    health_resource_name,
    peer_resources,
    validate_peer_name,
)
from meshnode.xds.rpc_errors import explain_rpc_error
from meshnode.xds.slots import SlotPlan

__all__ = ["XdsControlPlane"]

log = logging.getLogger("meshnode.xds")


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    CLOSED = "closed"


class XdsControlPlane:
    """Runtime directory + bootstrap + ADS server for one node's spiffe-id peers."""

    def __init__(
        self,
        node_name: str,
        runtime_dir: Path | None = None,
        *,
        bundle_map: bool = False,
        restart_delay: float = 1.0,
        check_interval: float = 5.0,
        slots: int = _bootstrap.PROVIDER_SLOTS,
        refresh_interval: int = _bootstrap.REFRESH_INTERVAL_SECONDS,
    ) -> None:
        """``slots``: copies of each certificate provider (1: rotation only through gRPC's re-read of
        the files; 4, the default, has three fresh slots for back-to-back rotations, see
        :mod:`meshnode.xds.slots`); ``refresh_interval``: seconds between those
        re-reads (gRPC's minimum is 1)."""
        _bootstrap.check_providers(slots, refresh_interval)
        self.node_name = node_name
        self.bundle_map = bundle_map
        self._slots = SlotPlan(slots)
        self._refresh_interval = refresh_interval
        self._loop: asyncio.AbstractEventLoop | None = None  # start()'s: runs the return to the home slot
        self._home: asyncio.TimerHandle | None = None
        self._restart_delay = restart_delay
        self._check_interval = check_interval
        self._dir = RuntimeDir(node_name, runtime_dir)
        self._node_id = f"meshnode/{node_name}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._snapshot: IdentitySnapshot | None = None
        self._peers: dict[str, PeerTarget] = {}
        self._health: dict[str, PeerTarget] = {}  # health-watch targets: one endpoint of a peer each
        self._unverifiable: frozenset[str] = frozenset()  # trust domains given placeholder roots
        self._bootstrap: _bootstrap.Bootstrap | None = None
        self._token: object | None = None
        self._probe: Resources = {}  # the A87 probe's resources, served beside the peers' (see meshnode.xds.a87)
        #: seconds the A87 probe took at start (None: not run)
        self.probe_seconds: float | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._restart_lock = asyncio.Lock()
        #: The ADS server (public for status and failure drills; the control plane restarts it).
        self.ads = AdsServer(self._dir.socket_path)
        #: How many times the ADS server was restarted.
        self.restarts = 0

    # -- state ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def runtime_dir(self) -> Path:
        return self._dir.path

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def bootstrap(self) -> _bootstrap.Bootstrap | None:
        """The bootstrap installed by :meth:`start` (None before)."""
        return self._bootstrap

    @property
    def peers(self) -> Mapping[str, PeerTarget]:
        return MappingProxyType(dict(self._peers))

    def _trust_domains(self) -> set[str]:
        if self._bootstrap is not None:
            return set(self._bootstrap.trust_domains)
        tds = {peer.trust_domain for peer in self._peers.values()}
        if self._snapshot is not None:
            tds |= set(self._snapshot.bundles) | {self._snapshot.trust_domain}
        return tds

    # -- inputs -----------------------------------------------------------

    @property
    def slot(self) -> int:
        """The certificate provider slot the served Clusters name now (see :mod:`meshnode.xds.slots`)."""
        return self._slots.current

    def update_identity(self, snapshot: IdentitySnapshot) -> None:
        """Write the snapshot's files (bundles first, then key and chain) and, once started, serve
        the Clusters in the next provider slot if any file changed; thread-safe.

        New handshakes use the new files from the push on; channels are not
        rebuilt. Calls after :meth:`close` are ignored.
        """
        with self._lock:
            if self._state is _State.CLOSED:
                log.debug("xds: identity update after close ignored")
                return
            self._snapshot = snapshot
            self._write_locked()

    def _write_locked(self) -> None:
        assert self._snapshot is not None
        version = self._dir.content_version
        missing = self._dir.write_identity(
            self._snapshot, self._trust_domains(), bundle_map=self.bundle_map,
            placeholder=verify_nothing_roots(), slots=self._slots.count,
        )
        if self._bootstrap is not None and self._dir.content_version != version and self._slots.rotate() is not None:
            self._serve_locked()  # every slot has the new files: the Clusters name a fresh one
            self._plan_return_home(self._slots.rotations)
        needed = {peer.trust_domain for peer in self._peers.values()}
        newly = needed & (set(missing) - self._unverifiable)
        if newly:
            log.warning(
                "xds: no trust bundle for %s in the node's identity: calls to peers there fail until the "
                "identity source delivers one (federation?)", ", ".join(sorted(newly)),
            )
        self._unverifiable = frozenset(missing)

    def set_peers(self, peers: Mapping[str, PeerSpec | PeerTarget]) -> None:
        """Serve exactly these peers from now on (gRPC gets the change at once); thread-safe."""
        targets = {validate_peer_name(name): PeerTarget.of(peer) for name, peer in peers.items()}
        reserved = sorted(name for name in targets if name.startswith(("meshnode.a87-probe", "meshnode.health.")))
        if reserved:
            raise PeerError(reason=f"peer name {reserved[0]!r} is reserved for meshnode (A87 probe, health watch)",
                            component="xds")
        with self._lock:
            if self._state is _State.CLOSED:
                raise ClosedError("xds: the control plane is closed")
            if self._bootstrap is not None:
                unknown = sorted({p.trust_domain for p in targets.values()} - self._bootstrap.trust_domains)
                if unknown:
                    raise PeerError(
                        reason=f"node '{self.node_name}' started with roots for "
                        f"{', '.join(sorted(self._bootstrap.trust_domains))}; peers in {', '.join(unknown)} "
                        "need a restart of the node (gRPC reads certificate providers from the bootstrap)",
                        component="xds"
                    )
            self._peers = targets
            self._serve_locked()

    def set_endpoints(self, name: str, endpoints: tuple[HostPort, ...]) -> bool:
        """Serve ``endpoints`` (IP addresses) for peer ``name`` from now on (EDS); thread-safe.

        True if they changed. The update reaches gRPC with the Clusters served
        again, and gRPC builds new subchannels on every Cluster update (its
        xDS certificate provider compares by address): connections to every
        endpoint, staying ones included, are replaced by new handshakes, while
        calls in flight finish on the old ones. Raises PeerError for a peer
        without an endpoint list (``address = "host:port"``).
        """
        with self._lock:
            if self._state is _State.CLOSED:
                return False
            peer = self._peers.get(name)
            if peer is None:
                raise PeerError(reason=f"no spiffe-id peer named {name!r}", component="xds")
            if peer.endpoints == endpoints:
                return False
            self._peers[name] = peer.with_endpoints(endpoints)
            self._serve_locked()
            return True

    def set_draining(self, name: str, endpoint: HostPort, draining: bool) -> bool:
        """Mark one endpoint of peer ``name`` draining (its server said NOT_SERVING) or not; thread-safe.

        True if that changed. A draining endpoint is served as DRAINING in
        EDS: gRPC sends it no new calls, those in flight finish.
        """
        with self._lock:
            peer = self._peers.get(name)
            if self._state is _State.CLOSED or peer is None or peer.endpoints is None:
                return False
            marked = peer.draining | {endpoint} if draining else peer.draining - {endpoint}
            if marked == peer.draining or endpoint not in peer.endpoints:
                return False
            self._peers[name] = peer.with_endpoints(peer.endpoints, frozenset(marked))
            self._serve_locked()
            return True

    def health_target(self, name: str, endpoint: HostPort) -> str:
        """An ``xds:///`` target reaching only ``endpoint`` of peer ``name``, verified like the peer
        (for watching its health); served until :meth:`drop_health_target`."""
        with self._lock:
            peer = self._peers.get(name)
            if peer is None:
                raise PeerError(reason=f"no spiffe-id peer named {name!r}", component="xds")
            resource = health_resource_name(name, endpoint)
            self._health[resource] = PeerTarget(str(endpoint), peer.spiffe_id, retries=0)
            self._serve_locked()
        self.target(name)  # the bootstrap is still in force
        return f"xds:///{resource}"

    def drop_health_target(self, name: str, endpoint: HostPort) -> None:
        with self._lock:
            if self._health.pop(health_resource_name(name, endpoint), None) is not None and \
                    self._state is not _State.CLOSED:
                self._serve_locked()

    def _plan_return_home(self, rotation: int) -> None:
        """Serve the home slot again two refresh intervals from now, unless another rotation comes first."""
        def arm() -> None:
            if self._home is not None:
                self._home.cancel()
            if self._state is _State.CLOSED:
                return
            assert self._loop is not None
            self._home = self._loop.call_later(2 * self._refresh_interval, self._return_home, rotation)

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: so is this control plane
                self._loop.call_soon_threadsafe(arm)

    def _return_home(self, rotation: int) -> None:
        with self._lock:
            if self._state is not _State.CLOSED and self._slots.settle(rotation):
                self._serve_locked()

    def _serve_locked(self) -> None:
        resources = peer_resources({**self._peers, **self._health}, bundle_map=self.bundle_map,
                                   slot=self._slots.current)
        for type_url, named in self._probe.items():
            resources.setdefault(type_url, {}).update(named)
        self.ads.set_resources(resources)

    def _set_probe(self, resources: Resources) -> None:
        with self._lock:
            self._probe = resources
            if self._state is not _State.CLOSED:
                self._serve_locked()

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        """Write the files, install the bootstrap and start serving; idempotent.

        If it fails, the control plane is closed (files removed) and the error raised.
        """
        if self._state is _State.STARTED:
            return
        if self._state is _State.CLOSED:
            raise ClosedError("xds: the control plane is closed; make a new one")
        self._loop = asyncio.get_running_loop()
        try:
            with self._lock:
                if self._snapshot is None:
                    raise IdentityUnavailableError(reason="start() needs an identity; update_identity() first",
                                                   component="xds")
                self._write_locked()  # the final set of trust domains
                tds = self._trust_domains()
                kit = a87.probe_kit() if self.bundle_map else None
                if kit is not None:
                    self._dir.write_probe(kit.map_document)
                boot = _bootstrap.Bootstrap(
                    node_id=self._node_id,
                    ads_socket=self._dir.socket_path,
                    identity_file=self._dir.identity_path,
                    bundle_files={td: self._dir.bundle_path(td, bundle_map=self.bundle_map) for td in tds},
                    bundle_map=self.bundle_map,
                    probe_map_file=self._dir.probe_path if kit is not None else None,
                    slots=self._slots.count,
                    refresh_interval=self._refresh_interval,
                )
                self._token = _bootstrap.install(boot, self.node_name)
                self._bootstrap = boot
            await self.ads.start()
            if kit is not None:
                self.probe_seconds = await a87.probe_bundle_maps(kit, self._set_probe)
                log.debug("xds: gRPC applies SPIFFE bundle maps per trust domain (probe took %.3f s)",
                          self.probe_seconds)
        except BaseException:
            await self.close()
            raise
        self._state = _State.STARTED
        self._supervisor = asyncio.ensure_future(self._supervise())
        log.info("xds: control plane of node '%s' serving %d peer(s) on unix:%s", self.node_name,
                 len(self._peers), self._dir.socket_path)

    def _healthy(self) -> bool:
        return self.ads.serving and _is_socket(self._dir.socket_path)

    async def _supervise(self) -> None:
        """Restart the ADS server when it stops or its socket vanishes, backing off on failures."""
        delay = self._restart_delay
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ads.wait_stopped(), self._check_interval)
            if self._healthy():
                continue
            log.warning("xds: the ADS server of node '%s' is down; restarting it in %.1fs "
                        "(gRPC serves calls from its cached configuration meanwhile)", self.node_name, delay)
            await asyncio.sleep(delay)
            async with self._restart_lock:
                if self._healthy():
                    continue  # restarted meanwhile
                try:
                    await self._restart()
                except Exception as exc:  # keep supervising whatever went wrong
                    log.error("xds: restarting the ADS server failed (%s); retrying", exc)
                    delay = min(delay * 2, 30.0)
                    continue
            delay = self._restart_delay

    async def _restart(self) -> None:
        await self.ads.stop()
        await self.ads.start()
        self.restarts += 1

    async def restart_ads(self) -> None:
        """Stop and start the ADS server now (gRPC reconnects and re-subscribes)."""
        self._require_started()
        async with self._restart_lock:
            await self._restart()

    async def wait_synced(self, timeout: float = 5.0) -> bool:
        """Wait until every connected gRPC xDS client ACKed the current peers; False on timeout."""
        return await self.ads.wait_settled(timeout)

    async def close(self) -> None:
        """Stop serving, uninstall the bootstrap, remove the files; idempotent."""
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        if self._home is not None:
            self._home.cancel()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.ads.stop()
        if self._token is not None:
            _bootstrap.release(self._token)
        self._dir.close()

    async def __aenter__(self) -> XdsControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- channels ---------------------------------------------------------

    def _require_started(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError("xds: the control plane is closed")
        if self._state is not _State.STARTED:
            raise PeerError(reason="the control plane has not been started; await start() first", component="xds")

    def target(self, name: str) -> str:
        """The channel target of peer ``name``; checks that the bootstrap is still in force."""
        self._require_started()
        if name not in self._peers:
            known = ", ".join(sorted(self._peers)) or "none"
            raise PeerError(reason=f"no spiffe-id peer named {name!r} (configured: {known})", component="xds")
        assert self._token is not None
        _bootstrap.verify_installed(self._token)
        return f"xds:///{name}"

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials for :meth:`target` channels: TLS from xDS, never plaintext."""
        self._require_started()
        return channel_credentials()

    def explain(self, name: str, err: grpc.aio.AioRpcError) -> str | None:
        """meshnode's wording for a failed call to peer ``name`` (None: nothing to add)."""
        peer = self._peers.get(name)
        no_bundle = peer is not None and peer.trust_domain in self._unverifiable
        return explain_rpc_error(name, peer, err, no_bundle=no_bundle)


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False
