"""The process-wide xDS bootstrap and who owns it.

gRPC reads its xDS bootstrap from the environment, not from a channel
argument: ``GRPC_XDS_BOOTSTRAP`` (a file path) first, then
``GRPC_XDS_BOOTSTRAP_CONFIG`` (the JSON itself). It reads it whenever it
creates the xDS client of a new ``xds:///`` target, and that client keeps it
while any channel to the target is open. So one process has, in practice,
one bootstrap, and the node writes it before its first xDS channel.

The bootstrap names the ADS server (a unix socket in the node's private
runtime directory, plaintext) and declares the ``file_watcher`` certificate
providers the resources refer to: ``meshnode-identity`` (the node's key and
chain) and one roots provider per trust domain: ``meshnode-bundles:<td>``
reading a SPIFFE bundle map that holds that trust domain only (gRFC A87,
what nodes use; see :meth:`Bootstrap.check_in_force`), or
``meshnode-bundle:<td>`` reading PEM roots. In map mode it also declares
``meshnode-a87-probe``, the map of the start-up probe
(:mod:`meshnode.xds.a87`).

Slots: each identity and roots provider is declared ``slots`` times, slot
``n`` (``name#n``; slot 0 is ``name``) reading its own copy of the files
(``n.`` + the file name, see :func:`slot_path`). gRPC builds a provider
instance when a Cluster first names it and reads its files right then,
and afterwards only every ``refresh_interval`` (at least 1 s). So a
rotation that writes the files and moves the Clusters to the next slot
reaches the next handshake at once, instead of after up to a refresh
interval (:class:`~meshnode.xds.control_plane.XdsControlPlane`).

One map per trust domain, not one map of all: gRPC's SAN matchers also
match DNS SANs, so with a single map a CA of a federated trust domain could
issue a certificate with a URI SAN of its own trust domain (A87 then picks
its bundle, and the chain verifies) and a DNS SAN spelled like a peer's
SPIFFE ID in another trust domain. With a map per peer trust domain, the
presented ID must be in the peer's trust domain and chain to its bundle.

:func:`install` refuses, with a :class:`~meshnode.errors.PeerError` naming
the clash, when ``GRPC_XDS_BOOTSTRAP`` is set (gRPC would ignore ours), when
something else already put another ``GRPC_XDS_BOOTSTRAP_CONFIG`` in the
environment, or when another live control plane in this process owns it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from meshnode.errors import ConfigError, PeerError

__all__ = [
    "BOOTSTRAP_CONFIG_ENV",
    "BOOTSTRAP_FILE_ENV",
    "IDENTITY_PROVIDER",
    "PROBE_PROVIDER",
    "PROVIDER_SLOTS",
    "REFRESH_INTERVAL_SECONDS",
    "SPIFFE_BUNDLE_MAP_ENV",
    "Bootstrap",
    "check_providers",
    "in_slot",
    "install",
    "release",
    "roots_provider",
    "slot_path",
    "verify_installed",
]

#: gRPC reads this file path first; when set, GRPC_XDS_BOOTSTRAP_CONFIG is ignored.
BOOTSTRAP_FILE_ENV = "GRPC_XDS_BOOTSTRAP"
#: The bootstrap JSON meshnode writes.
BOOTSTRAP_CONFIG_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"
#: gRPC reads ``spiffe_bundle_map_file`` only when this is true (gRFC A87).
SPIFFE_BUNDLE_MAP_ENV = "GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE"
IDENTITY_PROVIDER = "meshnode-identity"
#: The provider of the A87 start-up probe's map (two throwaway trust domains).
PROBE_PROVIDER = "meshnode-a87-probe"
#: gRPC's minimum; its default is 10 minutes, far too slow for rotation. With slots it is the
#: fallback: a rotation reaches new handshakes through a new slot, not through the re-read.
REFRESH_INTERVAL_SECONDS = 1
#: Copies of each provider a control plane declares (see "Slots" above and meshnode.xds.slots):
#: home and three fresh ones; 1 turns slots off.
PROVIDER_SLOTS = 4
_MAX_SLOTS = 9  # one digit in file names
_TRUE = ("1", "true", "yes")  # what gRPC's boolean env parser takes as true


def roots_provider(trust_domain: str, *, bundle_map: bool) -> str:
    """The provider instance holding the roots a peer of ``trust_domain`` is verified with."""
    return f"meshnode-bundles:{trust_domain}" if bundle_map else f"meshnode-bundle:{trust_domain}"


def check_providers(slots: int, refresh_interval: int) -> None:
    """Raise ConfigError unless ``slots`` and ``refresh_interval`` are what a bootstrap can declare."""
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= _MAX_SLOTS:
        raise ConfigError(f"xds: provider slots must be a whole number from 1 to {_MAX_SLOTS}, not {slots!r}")
    interval = refresh_interval
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < REFRESH_INTERVAL_SECONDS:
        raise ConfigError(
            f"xds: the file refresh interval must be whole seconds, at least {REFRESH_INTERVAL_SECONDS} "
            f"(gRPC's minimum), not {interval!r}"
        )


def in_slot(provider: str, slot: int) -> str:
    """The instance name of ``provider`` in slot ``slot`` (slot 0: ``provider`` itself)."""
    return provider if slot == 0 else f"{provider}#{slot}"


def slot_path(path: Path, slot: int) -> Path:
    """The copy of ``path`` that slot ``slot`` reads (slot 0: ``path`` itself, else ``<slot>.<name>``)."""
    return path if slot == 0 else path.with_name(f"{slot}.{path.name}")


@dataclass(frozen=True)
class Bootstrap:
    """One node's bootstrap: ADS socket, node id and certificate providers.

    ``bundle_files``: trust domain -> the file its roots provider reads, a
    SPIFFE bundle map of that trust domain alone (``bundle_map``) or PEM roots.
    ``probe_map_file``: the A87 probe's map (map mode only). ``slots``: copies
    of the identity and roots providers, slot ``n`` reading
    ``slot_path(file, n)``. ``refresh_interval``: seconds between gRPC's
    re-reads of the files (whole seconds, at least 1).
    """

    node_id: str
    ads_socket: Path
    identity_file: Path
    bundle_files: Mapping[str, Path] = field(default_factory=dict)
    bundle_map: bool = False
    probe_map_file: Path | None = None
    slots: int = 1
    refresh_interval: int = REFRESH_INTERVAL_SECONDS

    def __post_init__(self) -> None:
        if self.probe_map_file is not None and not self.bundle_map:
            raise ConfigError("xds: the A87 probe map belongs to a bootstrap in bundle-map mode")
        check_providers(self.slots, self.refresh_interval)

    @property
    def trust_domains(self) -> frozenset[str]:
        """Trust domains with a roots provider: peers elsewhere cannot be verified."""
        return frozenset(self.bundle_files)

    @cached_property
    def json(self) -> str:
        def watcher(**config: str) -> dict[str, object]:
            config["refresh_interval"] = f"{self.refresh_interval}s"
            return {"plugin_name": "file_watcher", "config": config}

        providers: dict[str, dict[str, object]] = {}
        for slot in range(self.slots):
            identity = str(slot_path(self.identity_file, slot))
            providers[in_slot(IDENTITY_PROVIDER, slot)] = watcher(certificate_file=identity,
                                                                  private_key_file=identity)
            for td, path in sorted(self.bundle_files.items()):
                name = in_slot(roots_provider(td, bundle_map=self.bundle_map), slot)
                roots = str(slot_path(path, slot))
                if self.bundle_map:
                    providers[name] = watcher(spiffe_bundle_map_file=roots)
                else:
                    providers[name] = watcher(ca_certificate_file=roots)
        if self.probe_map_file is not None:
            providers[PROBE_PROVIDER] = watcher(spiffe_bundle_map_file=str(self.probe_map_file))
        doc = {
            "xds_servers": [
                {
                    "server_uri": f"unix:{self.ads_socket}",
                    "channel_creds": [{"type": "insecure"}],  # a unix socket in a 0700 directory
                    "server_features": ["xds_v3"],
                }
            ],
            "node": {"id": self.node_id},
            "certificate_providers": providers,
        }
        return json.dumps(doc, sort_keys=True)

    def check_in_force(self) -> None:
        """In bundle-map mode, make sure gRPC is asked to use the maps; raise ConfigError if not.

        gRPC (1.85.3, verified) reads ``spiffe_bundle_map_file`` only when
        GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE is true, whenever it creates the
        xDS client of a new target: without it, it refuses a provider that
        has only a map (every call to the peer fails), and it would silently
        verify with a ``ca_certificate_file`` set beside the map, a flat pool
        in which any trust domain's CA vouches for any other's IDs. What the
        running gRPC really does is probed at start (:mod:`meshnode.xds.a87`).
        """
        if not self.bundle_map:
            return
        for name, provider in json.loads(self.json)["certificate_providers"].items():
            config = provider["config"]
            flat = "ca_certificate_file" in config or "spiffe_bundle_map_file" not in config
            if "certificate_file" not in config and flat:
                raise ConfigError(f"xds: provider {name} must name a bundle map and no flat CA file")
        value = os.environ.get(SPIFFE_BUNDLE_MAP_ENV, "")
        if value.lower() not in _TRUE:
            raise ConfigError(
                f"xds: spiffe-id peers are verified with SPIFFE bundle maps (gRFC A87), which need "
                f"{SPIFFE_BUNDLE_MAP_ENV}=true, but it is {value!r} in this process: without it gRPC refuses "
                f"meshnode's xDS bootstrap. Unset it (meshnode sets it) or set it to true"
            )


@dataclass(frozen=True)
class _Holder:
    owner: str
    token: object
    bootstrap: Bootstrap
    set_flag: bool  # meshnode set GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE itself


_lock = threading.Lock()
_holder: _Holder | None = None


def install(bootstrap: Bootstrap, owner: str) -> object:
    """Put ``bootstrap`` in this process's environment; returns a token for :func:`release`.

    ``owner`` names the node in error messages. In bundle-map mode this sets
    GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true unless it is already set (to
    anything: :meth:`Bootstrap.check_in_force` then judges the value).
    """
    global _holder
    with _lock:
        if _holder is not None:
            raise PeerError(
                reason=f"node '{owner}' cannot install its xDS bootstrap: node '{_holder.owner}' in this "
                "process owns it, and gRPC reads one bootstrap per process. Run each node with spiffe-id "
                "peers in its own process (or close the other node first)", component="xds"
            )
        _check_environment(bootstrap.json)
        set_flag = bootstrap.bundle_map and SPIFFE_BUNDLE_MAP_ENV not in os.environ
        if set_flag:
            os.environ[SPIFFE_BUNDLE_MAP_ENV] = "true"
        bootstrap.check_in_force()
        os.environ[BOOTSTRAP_CONFIG_ENV] = bootstrap.json
        token = object()
        _holder = _Holder(owner, token, bootstrap, set_flag)
        return token


def _check_file_env() -> None:
    path = os.environ.get(BOOTSTRAP_FILE_ENV)
    if path is not None:
        raise PeerError(
            reason=f"{BOOTSTRAP_FILE_ENV}={path} is set; gRPC reads that file before "
            f"{BOOTSTRAP_CONFIG_ENV}, so meshnode's control plane would be bypassed. Unset it for "
            "meshnode nodes, or use verify = \"dns\" peers only", component="xds"
        )


def _check_environment(value: str) -> None:
    _check_file_env()
    existing = os.environ.get(BOOTSTRAP_CONFIG_ENV)
    if existing is not None and existing != value:
        raise PeerError(
            reason=f"{BOOTSTRAP_CONFIG_ENV} is already set by something else in this process "
            f"({_describe(existing)}); gRPC would mix that control plane with meshnode's. Unset it "
            "before the node starts, or run the node in its own process", component="xds"
        )


def verify_installed(token: object) -> None:
    """Raise PeerError unless the bootstrap installed with ``token`` is what gRPC reads for a new channel."""
    with _lock:
        holder = _holder
    if holder is None or holder.token is not token:
        raise PeerError(reason="this control plane's bootstrap is not installed (closed, or never started)",
                        component="xds")
    _check_file_env()
    if os.environ.get(BOOTSTRAP_CONFIG_ENV) != holder.bootstrap.json:
        found = os.environ.get(BOOTSTRAP_CONFIG_ENV)
        raise PeerError(
            reason=f"something replaced node '{holder.owner}''s {BOOTSTRAP_CONFIG_ENV} after it started "
            f"({'removed' if found is None else _describe(found)}); a new channel would not use "
            "meshnode's control plane. Find what sets it, then restart the node", component="xds"
        )
    holder.bootstrap.check_in_force()


def release(token: object) -> None:
    """Remove the bootstrap installed with ``token``; idempotent.

    Close every channel that used it first: gRPC keeps a target's xDS client
    (and the bootstrap it read) while any channel to that target is open.
    """
    global _holder
    with _lock:
        if _holder is None or _holder.token is not token:
            return
        if os.environ.get(BOOTSTRAP_CONFIG_ENV) == _holder.bootstrap.json:
            del os.environ[BOOTSTRAP_CONFIG_ENV]
        if _holder.set_flag and os.environ.get(SPIFFE_BUNDLE_MAP_ENV) == "true":
            del os.environ[SPIFFE_BUNDLE_MAP_ENV]
        _holder = None


def _describe(value: str) -> str:
    try:
        doc = json.loads(value)
        server = doc["xds_servers"][0]["server_uri"]
        node = doc.get("node", {}).get("id", "?")
    except (ValueError, KeyError, IndexError, TypeError):
        return "not meshnode's"
    return f"node id '{node}', xDS server {server}"
