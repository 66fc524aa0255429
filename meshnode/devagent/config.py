"""The dev agent's configuration: ``agent.toml`` as frozen, validated dataclasses.

::

    trust_domain = "example.org"
    socket_dir = "/run/user/1000/meshnode-agent"  # <socket_dir>/<name>.sock per entry; default:
                                         # $XDG_RUNTIME_DIR/meshnode-agent, else /tmp/meshnode-sockets-<uid>;
                                         # refused when another user could write it
    svid_ttl = 3600                      # seconds; X509-SVIDs are re-issued at half life; JWT-SVIDs live as long
    state_dir = "/var/lib/meshnode-agent" # optional: the CA persists here (keys 0600)
    ca_overlap = 2.0                     # seconds a new CA sits in every bundle before it signs (SIGUSR2)
    max_connections = 256                # connections held at once per socket (1-65536)
    max_connections_per_uid = 64         # connections held at once per caller uid, all sockets (1-65536)
    handshake_timeout = 5.0              # seconds a new connection has to start HTTP/2 (0.1-300)
    idle_timeout = 300.0                 # seconds a connection without any call is kept (1-86400)

    [[entries]]
    name = "alpha"                       # socket alpha.sock: the dev stand-in for attestation
    spiffe_id = "spiffe://example.org/node/alpha"
    dns_names = ["alpha.local"]          # optional, added to the mapped DNS SAN
    map_dns = true                       # false: no DNS SAN at all (SPIRE's default profile)
    uid = 1000                           # optional: only this uid may use the socket
    hint = "internal"                    # optional: the SVID's hint (spire-server entry create -hint)

    [[entries]]                          # the same name again: a second SVID on alpha.sock
    name = "alpha"
    spiffe_id = "spiffe://example.org/node/alpha-external"
    hint = "external"
    uid = 1000                           # a socket has one uid: repeat it (or leave it out) on every table

Entries that share a ``name`` are served together on that socket, in the
order they appear (the first is the default SVID); each has its own SPIFFE
ID, hint and SAN options.

    [federation]                         # optional: foreign trust domain -> PEM bundle file
    "partner.org" = "partner-bundle.pem"

Relative paths are read relative to the directory of the config file. The
dataclasses validate themselves, so a config built in code gets the same
checks as one read from a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509

from meshnode.config._reader import Section, load_toml
from meshnode.config.node import check_hint
from meshnode.devagent.ca import validate_dns_name
from meshnode.errors import ConfigError, InvalidIdentityError, InvalidSpiffeIdError
from meshnode.identity.x509svid import load_pem_certs
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id, parse_trust_domain

__all__ = [
    "CONNECTION_LIMIT_RANGES",
    "DEFAULT_SVID_TTL",
    "AgentConfig",
    "EntryConfig",
    "default_socket_dir",
    "load_agent_config",
]

DEFAULT_SVID_TTL = 3600
MIN_SVID_TTL = 2
#: a year: the dev CA itself lives 365 days, and every date must stay within what datetime can add
MAX_SVID_TTL = 31_536_000
#: a day: how long a prepared CA may wait in the bundles before it signs (SIGUSR2)
MAX_CA_OVERLAP = 86_400.0
#: uid_t is 32 bits and (uid_t)-1 means "no uid" to the kernel
MAX_UID = 2**32 - 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL
#: the connection bounds of agent.toml: key -> (lowest, highest, whole number?)
CONNECTION_LIMIT_RANGES: dict[str, tuple[float, float, bool]] = {
    "max_connections": (1, 65536, True),
    "max_connections_per_uid": (1, 65536, True),
    "handshake_timeout": (0.1, 300.0, False),
    "idle_timeout": (1.0, 86400.0, False),
}


def _limit_problem(key: str, value: object) -> str | None:
    """What is wrong with a connection bound of agent.toml (nan and inf fail the range check), or None."""
    low, high, whole = CONNECTION_LIMIT_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
        return f"must be {'a whole number' if whole else 'a number'}, not {value!r}"
    if not low <= value <= high:
        return f"must be {low:g}-{high:g}{'' if whole else ' seconds'}, not {value!r}"
    return None


@dataclass(frozen=True)
class EntryConfig:
    """One registration entry: a socket name, the SPIFFE ID it hands out, SAN options."""

    name: str
    spiffe_id: SpiffeID
    dns_names: tuple[str, ...] = ()
    map_dns: bool = True
    uid: int | None = None
    #: the SVID's hint on the Workload API (None: no hint)
    hint: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise _agent(
                f"entry name {self.name!r} is not usable as a socket name; use 1-64 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        if not self.spiffe_id.path:
            raise InvalidSpiffeIdError(
                reason=f"entry '{self.name}': {self.spiffe_id} names a trust domain, not a workload; "
                f"add a path, e.g. {self.spiffe_id}/node/{self.name}",
                component="agent", spiffe_id=str(self.spiffe_id),
            )
        try:
            names = tuple(dict.fromkeys(validate_dns_name(n) for n in self.dns_names))
        except ConfigError as exc:
            raise _agent(f"entry '{self.name}': dns_names: {exc.reason}") from None
        object.__setattr__(self, "dns_names", names)
        if self.map_dns:
            try:
                dns_name_for(self.spiffe_id)
            except InvalidSpiffeIdError:
                raise _agent(
                    f"entry '{self.name}': {self.spiffe_id} has no DNS name (too long for DNS); "
                    "set map_dns = false for this entry, or shorten the ID"
                ) from None
        if self.uid is not None and not 0 <= self.uid <= MAX_UID:
            raise _agent(f"entry '{self.name}': uid must be from 0 to {MAX_UID}, not {self.uid}")
        if self.hint is not None and (problem := check_hint(self.hint)) is not None:
            raise _agent(f"entry '{self.name}' ({self.spiffe_id}): hint {problem}")


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent: trust domain, where sockets and state live, entries, federation."""

    trust_domain: str
    socket_dir: Path
    entries: tuple[EntryConfig, ...]
    svid_ttl: int = DEFAULT_SVID_TTL
    #: seconds a new CA is in every bundle before it signs anything (CA rotation by signal)
    ca_overlap: float = 2.0
    state_dir: Path | None = None
    #: Foreign trust domain -> its X.509 roots, sent as federated bundles.
    federation: Mapping[str, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    #: connections held at once per socket, and per caller uid across all sockets
    max_connections: int = 256
    max_connections_per_uid: int = 64
    #: seconds a new connection has to start HTTP/2; seconds a connection without any call is kept
    handshake_timeout: float = 5.0
    idle_timeout: float = 300.0
    #: socket name -> its entries in config order (the first is the default SVID); derived from entries
    sockets: Mapping[str, tuple[EntryConfig, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in CONNECTION_LIMIT_RANGES:
            problem = _limit_problem(key, getattr(self, key))
            if problem is not None:
                raise _agent(f"{key} {problem}")
        object.__setattr__(self, "trust_domain", parse_trust_domain(self.trust_domain))
        object.__setattr__(self, "socket_dir", Path(self.socket_dir))
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "entries", tuple(self.entries))
        if (
            isinstance(self.svid_ttl, bool)
            or not isinstance(self.svid_ttl, int)
            or not MIN_SVID_TTL <= self.svid_ttl <= MAX_SVID_TTL
        ):
            raise _agent(f"svid_ttl must be a whole number of seconds from {MIN_SVID_TTL} to "
                              f"{MAX_SVID_TTL}, not {self.svid_ttl!r}")
        if (
            isinstance(self.ca_overlap, bool)
            or not isinstance(self.ca_overlap, (int, float))
            or not 0 <= self.ca_overlap <= MAX_CA_OVERLAP  # also refuses nan
        ):
            raise _agent(f"ca_overlap must be from 0 to {MAX_CA_OVERLAP:.0f} seconds, "
                              f"not {self.ca_overlap!r}")
        if not self.entries:
            raise _agent("no entries; add one [[entries]] table (name, spiffe_id) per workload")
        sockets: dict[str, list[EntryConfig]] = {}
        for entry in self.entries:
            if not entry.spiffe_id.member_of(self.trust_domain):
                raise _agent(
                    f"entry '{entry.name}': {entry.spiffe_id} is outside the agent's trust domain "
                    f"'{self.trust_domain}'; the dev CA signs only IDs of its own trust domain"
                )
            _check_same_socket(sockets.setdefault(entry.name, []), entry)
            sockets[entry.name].append(entry)
        for name in sockets:
            path = str(self.socket_path(name))
            if len(os.fsencode(os.path.abspath(path))) > _MAX_SOCKET_PATH:
                raise _agent(
                    f"socket path {path} is longer than {_MAX_SOCKET_PATH} bytes (a unix socket "
                    "limit); use a shorter socket_dir or entry name"
                )
        object.__setattr__(self, "sockets", MappingProxyType({n: tuple(e) for n, e in sockets.items()}))
        federation: dict[str, tuple[x509.Certificate, ...]] = {}
        for td, certs in self.federation.items():
            name = parse_trust_domain(td)
            if name == self.trust_domain:
                raise _agent(
                    f"federation lists the agent's own trust domain '{name}'; "
                    "only foreign trust domains belong there"
                )
            if not certs:
                raise _agent(f"federated bundle for '{name}' holds no certificate")
            federation[name] = tuple(certs)
        object.__setattr__(self, "federation", MappingProxyType(federation))

    def socket_path(self, name: str) -> Path:
        """Where the entry called ``name`` is served: ``<socket_dir>/<name>.sock``."""
        return self.socket_dir / f"{name}.sock"

    def entry(self, name: str) -> EntryConfig:
        """The first entry called ``name``: the default SVID of its socket."""
        return self.entries_of(name)[0]

    def entries_of(self, name: str) -> tuple[EntryConfig, ...]:
        """Every entry called ``name``, in config order: the SVIDs its socket serves."""
        try:
            return self.sockets[name]
        except KeyError:
            raise _agent(f"no entry named {name!r} (known: {', '.join(self.sockets)})") from None


def _check_same_socket(earlier: list[EntryConfig], entry: EntryConfig) -> None:
    """Entries sharing a name share a socket: one uid, distinct SPIFFE IDs, distinct hints."""
    for other in earlier:
        if other.spiffe_id == entry.spiffe_id:
            raise _agent(
                f"two entries named '{entry.name}' hand out {entry.spiffe_id}; an entry name may "
                "repeat to serve several SVIDs on one socket, each with its own spiffe_id: remove one of them"
            )
        if entry.hint is not None and other.hint == entry.hint:
            raise _agent(
                f"entries '{entry.name}' {other.spiffe_id} and {entry.spiffe_id} have the same hint "
                f"{entry.hint!r}; a hint tells a workload's SVIDs apart: give each its own"
            )
        if other.uid != entry.uid:
            raise _agent(
                f"entries named '{entry.name}' disagree on uid ({_uid(other.uid)} for {other.spiffe_id}, "
                f"{_uid(entry.uid)} for {entry.spiffe_id}); they share one socket, which has one uid: set the "
                "same uid on every [[entries]] table of that name"
            )


def _uid(uid: int | None) -> str:
    return "no uid" if uid is None else f"uid {uid}"


def _agent(reason: str) -> ConfigError:
    """An agent config error: ``agent: <reason>``, the reason kept as a field."""
    return ConfigError(reason=reason, component="agent")


def _in_file(exc: ConfigError, source: Path) -> ConfigError:
    """The same error, with the config file named after the component."""
    return type(exc)(f"agent: {source}: {exc.reason}", reason=exc.reason, key=exc.key, path=str(source))


def _entry(sec: Section, source: Path) -> EntryConfig:
    name = sec.string("name")
    raw_id = sec.string("spiffe_id")
    try:
        spiffe_id = parse_spiffe_id(raw_id)
    except InvalidSpiffeIdError as exc:
        error = sec.error("spiffe_id", f"is not a valid SPIFFE ID: {raw_id!r}: {exc.reason}")
        raise InvalidSpiffeIdError(str(error), reason=error.reason, key=error.key, path=error.path,
                                   value=raw_id) from None
    dns_names = sec.strings("dns_names", ())
    map_dns = sec.boolean("map_dns", True)
    uid = sec.integer("uid", None, minimum=0, maximum=MAX_UID)
    hint = sec.string("hint", None)
    if hint is not None and (problem := check_hint(hint)) is not None:
        raise sec.error("hint", problem)
    sec.done()
    try:
        return EntryConfig(name=name, spiffe_id=spiffe_id, dns_names=dns_names, map_dns=map_dns, uid=uid, hint=hint)
    except ConfigError as exc:
        raise _in_file(exc, source) from None


def _federation(sec: Section, names: list[str], base: Path) -> dict[str, tuple[x509.Certificate, ...]]:
    out: dict[str, tuple[x509.Certificate, ...]] = {}
    for td in names:
        path = sec.file_path(td, base)
        try:
            out[td] = tuple(load_pem_certs(path.read_bytes(), f"federated bundle {path}"))
        except OSError as exc:
            raise sec.error(td, f"names {path}, which cannot be read ({exc.strerror})") from None
        except InvalidIdentityError as exc:
            raise sec.error(td, exc.reason) from None
    sec.done()
    return out


def default_socket_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/meshnode-agent`` (the user's private runtime dir), else ``/tmp/meshnode-sockets-<uid>``.

    The agent refuses either when another user could write it (see :mod:`meshnode.devagent.safe_dir`).
    """
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "meshnode-agent"
    return Path(f"/tmp/meshnode-sockets-{os.geteuid()}")


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate ``agent.toml``; raises ConfigError naming the file and key."""
    source = Path(path)
    base = source.resolve().parent
    data = load_toml(source, "agent")
    root = Section(data, "", str(source), "agent")
    trust_domain = root.string("trust_domain")
    socket_dir = root.file_path("socket_dir", base, None) or default_socket_dir()
    svid_ttl = root.duration("svid_ttl", DEFAULT_SVID_TTL, minimum=MIN_SVID_TTL, maximum=MAX_SVID_TTL, whole=True)
    state_dir = root.file_path("state_dir", base, None)
    ca_overlap = root.duration("ca_overlap", 2.0, minimum=0.0, maximum=MAX_CA_OVERLAP)
    limits = {
        key: (root.integer if whole else root.duration)(key, getattr(AgentConfig, key))
        for key, (_, _, whole) in CONNECTION_LIMIT_RANGES.items()
    }
    for key, value in limits.items():
        problem = _limit_problem(key, value)
        if problem is not None:
            raise root.error(key, problem)
    entries = [_entry(sec, source) for sec in root.section_list("entries")]
    federation_table = root.section("federation")  # refuses a non-table, so data[...] is a table below
    federation = _federation(federation_table, list(data.get("federation", {})), base)
    root.done()
    try:
        return AgentConfig(
            trust_domain=trust_domain,
            socket_dir=socket_dir,
            entries=tuple(entries),
            svid_ttl=svid_ttl,
            ca_overlap=ca_overlap,
            state_dir=state_dir,
            federation=federation,
            **limits,
        )
    except ConfigError as exc:
        raise _in_file(exc, source) from None
