"""node.toml: the node's configuration, frozen and validated when loaded.

```toml
[node]
name = "alpha"
listen = "127.0.0.1:7001"      # optional: without it the node is a client only (no port)
mode = "production"            # development | staging | production  (env MESHNODE_MODE)
services = ["meshnode.demo:EchoService"]
shutdown_grace = 5.0
peer_verify = "spiffe-id"       # default verification for [peers.*]: spiffe-id | dns
keepalive = 10.0                # seconds between HTTP/2 pings on peer connections (0: off)
connect_timeout = 5.0           # seconds before a connection attempt to a peer counts as failed
max_connection_age = 600.0      # seconds before the server asks a client to reconnect (0: never)
handshake_timeout = 5.0         # seconds a new connection has to finish TLS and start HTTP/2 (0.1-300)
max_connections = 2048          # connections held at once; more are closed at accept (1-1048576)
log_format = "text"             # text | json: how `meshnode run` logs (env MESHNODE_LOG_FORMAT)

[identity]
source = "workload-api"         # workload-api | files | dev
socket = "unix:///run/spire/agent.sock"   # default: SPIFFE_ENDPOINT_SOCKET
trust_domain = "example.org"
timeout = 10.0                  # seconds to wait for the first SVID
federates_with = []             # other trust domains whose callers this node accepts
jwt_bundles_dir = "jwt-bundles"  # optional: <trust-domain>.json SPIFFE bundles whose "jwt-svid" keys verify JWT-SVIDs
# workload-api: spiffe_id, hint  (take the SVID with this ID / hint when several are delivered)
# files:  cert, key, bundle, federated_bundles_dir
# dev:    spiffe_id, state_dir, svid_ttl

[authz]
allow = ["spiffe://example.org/node/beta"]
policy = "policy.json"          # gRFC A43 policy file (reloaded on change)
audit = "on_deny"               # none | on_deny | on_allow | all
dry_run = false
jwt = "off"                     # off | optional | required: JWT-SVIDs ("authorization: Bearer ...") on calls
jwt_audiences = []              # audiences accepted besides the node's own SPIFFE ID
principal = "mtls"              # mtls | jwt: whose identity the rules, allow, @only and peer_id() use
jwt_forwarders = []             # principal = "jwt": proxies allowed to carry another workload's token

[peers.beta]
address = "127.0.0.1:7002"      # or "dns:///beta.prod.svc:7002", "ipv4:10.0.0.1:7002,10.0.0.2:7002"
# addresses = ["10.0.0.1:7002", "10.0.0.2:7002"]   # instead of address: a static list
spiffe_id = "spiffe://example.org/node/beta"
server_name = "..."             # optional, dns mode: the TLS name to verify
verify = "dns"                  # optional, overrides node.peer_verify
lb = "round_robin"              # optional: round_robin | pick_first (default: round robin for several endpoints)
retries = 2                     # optional: more attempts on retry_on codes (0: off)
retry_on = ["UNAVAILABLE"]
timeout = 30.0                  # optional: deadline of calls that give none
jwt = false                     # true: every call carries "authorization: Bearer <JWT-SVID>"
jwt_audience = "..."            # optional: the token's audience (default: the peer's spiffe_id)
jwt_token_file = "..."          # optional: read the token from this file (spiffe-helper), re-read on change

[telemetry]
exporter = "jsonl"              # otlp | console | jsonl | none
jsonl_path = "alpha-spans.jsonl"
prometheus = "127.0.0.1:9464"   # serve GET /metrics on host:port (port 0: any free port)
max_peer_ids = 200              # distinct caller/peer IDs in RPC metrics; the rest are "other"
```

Durations (``shutdown_grace``, ``keepalive``, ``timeout``, ...) take seconds or
``"30s"``, ``"5m"``, ``"1h"`` (:mod:`meshnode.config.duration`).

Every number has a documented range (:data:`LIMITS`, docs/configuration.md):
``nan``, ``inf`` and values gRPC could not take are refused with the key.

Environment overrides: ``MESHNODE_MODE`` (mode), ``MESHNODE_LISTEN``
(listen), ``MESHNODE_LOG_FORMAT`` (log_format). This module and :mod:`meshnode.devagent.config` are the only places
that read configuration files and the environment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from meshnode.config._reader import Section, load_toml, number_text, printable, show
from meshnode.config.logs import LOG_FORMATS, LogFormat, env_log_format
from meshnode.config.targets import EndpointSpec, endpoint_spec
from meshnode.config.telemetry import TelemetrySettings, telemetry_settings_from_section
from meshnode.errors import ConfigError, InvalidSpiffeIdError
from meshnode.spiffeid import SpiffeID, dns_name_for, parse_spiffe_id, parse_trust_domain

__all__ = [
    "BALANCING",
    "JWT_MODES",
    "LIMITS",
    "MAX_HINT",
    "MODES",
    "PRINCIPALS",
    "RETRYABLE_CODES",
    "AuthzSettings",
    "IdentityConfig",
    "NodeConfig",
    "PeerConfig",
    "check_audience",
    "check_hint",
    "load_node_config",
    "node_config_from_dict",
    "parse_address",
]

Mode = Literal["development", "staging", "production"]
MODES: tuple[Mode, ...] = ("development", "staging", "production")
Source = Literal["workload-api", "files", "dev"]
SOURCES: tuple[Source, ...] = ("workload-api", "files", "dev")
Verify = Literal["spiffe-id", "dns"]
VERIFY_MODES: tuple[Verify, ...] = ("spiffe-id", "dns")
Audit = Literal["none", "on_deny", "on_allow", "all"]
AUDIT_CONDITIONS: tuple[Audit, ...] = ("none", "on_deny", "on_allow", "all")
JwtMode = Literal["off", "optional", "required"]
JWT_MODES: tuple[JwtMode, ...] = ("off", "optional", "required")
Principal = Literal["mtls", "jwt"]
PRINCIPALS: tuple[Principal, ...] = ("mtls", "jwt")
#: The longest JWT audience a configuration may name.
MAX_AUDIENCE = 1024


def _error(reason: str, *, key: str | None = None, value: str | None = None) -> ConfigError:
    """A config error whose message is ``config: <reason>``; ``reason`` stays available as a field."""
    return ConfigError(reason=printable(reason), component="config", key=key, value=value)


def _one_of(value: object, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise _error(f"{what} must be one of {', '.join(choices)}; got {value!r}", key=what)
MODE_ENV = "MESHNODE_MODE"
LISTEN_ENV = "MESHNODE_LISTEN"
DEFAULT_DEV_TRUST_DOMAIN = "example.org"
#: [node] handshake_timeout: allowed range, seconds
HANDSHAKE_TIMEOUT_RANGE = (0.1, 300.0)
#: [node] max_connections: allowed range
MAX_CONNECTIONS_RANGE = (1, 1 << 20)

#: (minimum, maximum) of every number in node.toml, as docs/configuration.md lists them. The maxima keep
#: each value within what gRPC takes (milliseconds as a 32-bit integer) and what a clock can add.
LIMITS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "node.shutdown_grace": (0.0, 3600.0),
    "node.keepalive": (0.0, 86400.0),
    "node.connect_timeout": (0.1, 3600.0),
    "node.max_connection_age": (0.0, 2_000_000.0),
    "identity.timeout": (0.1, 3600.0),
    "identity.svid_ttl": (2, 31_536_000),
})
_SERVICE_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def _limits(key: str) -> dict[str, Any]:
    low, high = LIMITS[key]
    return {"minimum": low, "maximum": high}


def check_limit(key: str, value: object) -> None:
    """Refuse a value of ``key`` outside :data:`LIMITS` (configs built in code get the file's checks)."""
    low, high = LIMITS[key]
    number = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or (isinstance(number, float) and not math.isfinite(number))
        or not low <= number <= high
    ):
        raise _error(f"'{key}' must be a number from {number_text(low)} to {number_text(high)}, not {show(value)}",
                     key=key)


def parse_address(value: str, what: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port); raises ConfigError.

    The error's ``reason`` is the value and the problem, without ``what`` (the
    key's name), so a caller can put the key its own way.
    """

    def bad(problem: str) -> ConfigError:
        reason = f"{show(value)} {problem}"
        return ConfigError(printable(f"config: {what} {reason}"), reason=printable(reason), key=what, value=value)

    host, sep, port_text = value.rpartition(":")
    # isdigit() alone accepts '²' and other digits int() refuses; five ASCII digits at most
    if not sep or not host or not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise bad("is not host:port (e.g. 127.0.0.1:7001)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise bad(f"is not host:port: port {port} is out of range")
    if host.startswith("["):
        if not host.endswith("]"):
            raise bad("is not host:port: unbalanced '[' in the IPv6 address")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad(f"is not host:port: {host} is not an IPv6 address") from None
    elif ":" in host:
        raise bad("is not host:port: write IPv6 addresses as [addr]:port")
    elif not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
        raise bad(f"is not host:port: {host!r} is not a host name or IP address")
    return host, port


@dataclass(frozen=True)
class IdentityConfig:
    source: Source = "workload-api"
    socket: str | None = None
    trust_domain: str | None = None
    timeout: float = 10.0
    federates_with: tuple[str, ...] = ()
    cert: Path | None = None
    key: Path | None = None
    bundle: Path | None = None
    federated_bundles_dir: Path | None = None
    spiffe_id: SpiffeID | None = None
    state_dir: Path | None = None
    svid_ttl: dt.timedelta = dt.timedelta(hours=1)
    #: workload-api: take the SVID delivered with this hint (with spiffe_id: with both)
    hint: str | None = None
    #: SPIFFE bundle JSON files (<trust-domain>.json) whose "jwt-svid" keys verify JWT-SVIDs
    jwt_bundles_dir: Path | None = None

    def __post_init__(self) -> None:
        _one_of(self.source, SOURCES, "[identity] source")
        check_limit("identity.timeout", self.timeout)
        check_limit("identity.svid_ttl", self.svid_ttl)
        problem = _hint_problem(self.source, self.hint)
        if problem is not None:
            raise _error(f"[identity] hint {problem}", key="identity.hint")

    def accepted_trust_domains(self, own: str) -> frozenset[str]:
        return frozenset((own, *self.federates_with))


Balancing = Literal["round_robin", "pick_first"]
BALANCING: tuple[Balancing, ...] = ("round_robin", "pick_first")
#: The status codes [peers.NAME] retry_on may name: the ones gRPC's xDS retry policy takes (gRFC A44)
RETRYABLE_CODES = ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED")
#: [peers.NAME] retries: gRPC makes at most 5 attempts per call
PEER_RETRIES_RANGE = (0, 4)
#: [peers.NAME] timeout, seconds
PEER_TIMEOUT_RANGE = (0.001, 86400.0)


@dataclass(frozen=True)
class PeerConfig:
    """``[peers.NAME]``: a service with one SPIFFE ID and one or more endpoints.

    ``address`` is "" when ``addresses`` lists the endpoints. ``lb`` None
    takes the default: round robin when the peer can have more than one
    endpoint, else pick first. ``endpoints`` is what ``address`` /
    ``addresses`` say (:mod:`meshnode.config.targets`).
    """

    name: str
    address: str
    spiffe_id: SpiffeID
    verify: Verify = "spiffe-id"
    server_name: str | None = None
    addresses: tuple[str, ...] | None = None
    lb: Balancing | None = None
    retries: int = 2
    retry_on: tuple[str, ...] = ("UNAVAILABLE",)
    timeout: float | None = None
    #: every call carries "authorization: Bearer <JWT-SVID>" for :attr:`audience`
    jwt: bool = False
    jwt_audience: str | None = None
    #: the token comes from this file (as spiffe-helper writes it), re-read when it changes
    jwt_token_file: Path | None = None
    endpoints: EndpointSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _one_of(self.verify, VERIFY_MODES, f"[peers.{self.name}] verify")
        problem = _peer_jwt_problem(self.jwt, self.jwt_audience, self.jwt_token_file)
        if problem is not None:
            raise _error(f"[peers.{self.name}] {problem[0]} {problem[1]}", key=f"peers.{self.name}.{problem[0]}")
        service_problem = _peer_problem(self)
        if service_problem is not None:
            raise _error(f"[peers.{self.name}] {service_problem}", key=f"peers.{self.name}")
        try:
            spec = endpoint_spec(self.address or None, self.addresses)
        except ConfigError as exc:
            raise _error(f"[peers.{self.name}] {exc.key} {exc.reason}", key=f"peers.{self.name}.{exc.key}") from None
        object.__setattr__(self, "endpoints", spec)
        if self.lb is None:
            object.__setattr__(self, "lb", "round_robin" if spec.can_be_several else "pick_first")

    @property
    def where(self) -> str:
        """The endpoints as configured, for messages."""
        return self.endpoints.text

    @property
    def audience(self) -> str:
        """The audience of the JWT-SVIDs sent to this peer: ``jwt_audience``, else its SPIFFE ID."""
        return self.jwt_audience if self.jwt_audience is not None else str(self.spiffe_id)

    @property
    def tls_name(self) -> str:
        """The DNS name a dns-mode channel verifies."""
        return self.server_name or dns_name_for(self.spiffe_id)


def _peer_problem(peer: PeerConfig) -> str | None:
    """What is wrong with the balancing, retry and timeout keys of ``peer``, or None."""
    if peer.lb is not None and peer.lb not in BALANCING:
        return f"lb must be one of {', '.join(BALANCING)}; got {show(peer.lb)}"
    low, high = PEER_RETRIES_RANGE
    if isinstance(peer.retries, bool) or not isinstance(peer.retries, int) or not low <= peer.retries <= high:
        return (f"retries must be a whole number from {low} to {high} (gRPC makes at most 5 attempts), "
                f"not {show(peer.retries)}")
    if not isinstance(peer.retry_on, tuple) or not peer.retry_on:
        return "retry_on must list at least one status code (turn retries off with retries = 0)"
    for code in peer.retry_on:
        if code not in RETRYABLE_CODES:
            return f"retry_on: {show(code)} is not one of {', '.join(RETRYABLE_CODES)}"
    if peer.timeout is not None:
        lo, hi = PEER_TIMEOUT_RANGE
        t = peer.timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not lo <= t <= hi:
            return f"timeout must be a number of seconds from {number_text(lo)} to {number_text(hi)}, not {show(t)}"
    return None


@dataclass(frozen=True)
class AuthzSettings:
    allow: tuple[str, ...] = ()
    policy: Path | None = None
    audit: Audit = "on_deny"
    dry_run: bool = False
    jwt: JwtMode = "off"
    jwt_audiences: tuple[str, ...] = ()
    principal: Principal = "mtls"
    jwt_forwarders: tuple[SpiffeID, ...] = ()

    def __post_init__(self) -> None:
        _one_of(self.audit, AUDIT_CONDITIONS, "[authz] audit")
        _one_of(self.jwt, JWT_MODES, "[authz] jwt")
        _one_of(self.principal, PRINCIPALS, "[authz] principal")
        problem = _authz_jwt_problem(self.jwt, self.jwt_audiences, self.principal, self.jwt_forwarders)
        if problem is not None:
            raise _error(f"[authz] {problem[0]} {problem[1]}", key=f"authz.{problem[0]}")

    @property
    def configured(self) -> bool:
        return bool(self.allow) or self.policy is not None


@dataclass(frozen=True)
class NodeConfig:
    name: str
    listen: str | None = None  # None: a client-only node (opens no port)
    mode: Mode = "development"
    services: tuple[str, ...] = ()
    shutdown_grace: float = 5.0
    peer_verify: Verify = "spiffe-id"
    keepalive: float = 10.0
    connect_timeout: float = 5.0
    max_connection_age: float = 600.0
    handshake_timeout: float = 5.0
    max_connections: int = 2048
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    authz: AuthzSettings = field(default_factory=AuthzSettings)
    peers: Mapping[str, PeerConfig] = field(default_factory=dict)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    source_path: Path | None = None
    #: how `meshnode run` logs (env MESHNODE_LOG_FORMAT beats it); the library itself never configures logging
    log_format: LogFormat = "text"

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", MappingProxyType(dict(self.peers)))
        if self.listen is not None:
            parse_address(self.listen, "[node] listen")
        if self.telemetry.prometheus is not None:
            parse_address(self.telemetry.prometheus, "[telemetry] prometheus")
        _one_of(self.log_format, LOG_FORMATS, "[node] log_format")
        for key in ("shutdown_grace", "keepalive", "connect_timeout", "max_connection_age"):
            check_limit(f"node.{key}", getattr(self, key))
        _one_of(self.mode, MODES, "[node] mode")
        _one_of(self.peer_verify, VERIFY_MODES, "[node] peer_verify")
        problem = _limit_problem(self.handshake_timeout, self.max_connections)
        if problem is not None:
            raise _error(f"[node] {problem[0]} {problem[1]}", key=f"node.{problem[0]}")
        jwt_problem = _jwt_source_problem(self)
        if jwt_problem is not None:
            raise _error(jwt_problem)

    @property
    def host_port(self) -> tuple[str, int]:
        if self.listen is None:
            raise _error(f"node {self.name!r} has no [node] listen (a client-only node)", key="node.listen")
        return parse_address(self.listen, "[node] listen")


#: The longest hint a configuration may name (node.toml [identity] hint, agent.toml [[entries]] hint).
MAX_HINT = 1024


def check_hint(hint: str) -> str | None:
    """What is wrong with ``hint`` as a configured SVID hint, or None."""
    if not hint:
        return "is empty; leave the key out, or name the hint of a registration entry"
    if len(hint) > MAX_HINT:
        return f"is {len(hint)} characters long; the limit is {MAX_HINT}"
    if not hint.isprintable():
        return "holds control or non-printable characters"
    return None


def _hint_problem(source: str, hint: str | None) -> str | None:
    """What is wrong with ``[identity] hint`` for ``source``, or None."""
    if hint is None:
        return None
    if source != "workload-api":
        return (f"selects among the SVIDs a Workload API delivers; it applies only to source = \"workload-api\", "
                f"not {source!r}: remove it")
    return check_hint(hint)


def _limit_problem(handshake_timeout: float, max_connections: int) -> tuple[str, str] | None:
    """(key, what is wrong) when a connection limit of [node] is out of range; nan and inf are."""
    low, high = HANDSHAKE_TIMEOUT_RANGE
    if isinstance(handshake_timeout, bool) or not (low <= handshake_timeout <= high):
        return "handshake_timeout", f"must be {low}-{high:g} seconds, not {handshake_timeout!r}"
    lo, hi = MAX_CONNECTIONS_RANGE
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not lo <= max_connections <= hi:
        return "max_connections", f"must be a whole number {lo}-{hi}, not {max_connections!r}"
    return None


def check_audience(audience: str) -> str | None:
    """What is wrong with ``audience`` as a configured JWT audience, or None."""
    if not audience.strip():
        return "is empty"
    if len(audience) > MAX_AUDIENCE:
        return f"is {len(audience)} characters long; the limit is {MAX_AUDIENCE}"
    if not audience.isprintable():
        return "holds control or non-printable characters"
    return None


def _peer_jwt_problem(jwt: bool, audience: str | None, token_file: Path | None) -> tuple[str, str] | None:
    """(key, what is wrong) with the JWT keys of one [peers.NAME] table, or None."""
    if not jwt:
        for key, value in (("jwt_audience", audience), ("jwt_token_file", token_file)):
            if value is not None:
                return key, "applies only with jwt = true (calls to this peer carry no JWT-SVID)"
        return None
    if audience is not None:
        problem = check_audience(audience)
        if problem is not None:
            return "jwt_audience", problem
    return None


def _authz_jwt_problem(
    jwt: str, audiences: tuple[str, ...], principal: str, forwarders: tuple[SpiffeID, ...]
) -> tuple[str, str] | None:
    """(key, what is wrong) with the JWT keys of [authz], or None."""
    for i, audience in enumerate(audiences):
        problem = check_audience(audience)
        if problem is not None:
            return "jwt_audiences", f"item {i} {problem}"
    if principal == "jwt" and jwt != "required":
        return "jwt", (f'must be "required" with principal = "jwt" (the token names the caller), not {jwt!r}; '
                       'leave it out or set it to "required"')
    if jwt == "off" and audiences:
        return "jwt_audiences", 'applies only with jwt = "optional" or "required"'
    if principal != "jwt" and forwarders:
        return "jwt_forwarders", ('applies only with principal = "jwt" (it names the proxies allowed to carry another '
                                  "workload's token)")
    return None


def _jwt_source_problem(config: NodeConfig) -> str | None:
    """What keeps the identity source from supplying the JWT-SVIDs or bundles the config asks for, or None."""
    idc = config.identity
    if idc.source == "files":
        for peer in config.peers.values():
            if peer.jwt and peer.jwt_token_file is None:
                return (f"[peers.{peer.name}] jwt = true needs jwt_token_file with [identity] source = \"files\" "
                        "(no agent to fetch JWT-SVIDs from): point it at the token file spiffe-helper writes")
        if config.authz.jwt != "off" and idc.jwt_bundles_dir is None:
            return ('[authz] jwt needs the JWT bundles to verify tokens with: set [identity] jwt_bundles_dir with '
                    'source = "files" (SPIFFE bundle JSON files, "use": "jwt-svid" keys)')
    return None


def _path(section: Section, key: str, base: Path) -> Path | None:
    path: Path | None = section.file_path(key, base, None)
    return path


def _spiffe_id(section: Section, key: str, default: Any = None) -> SpiffeID | None:
    value = section.string(key, default)
    if value is None:
        return None
    try:
        return parse_spiffe_id(value)
    except InvalidSpiffeIdError as exc:
        raise section.error(key, f"is not a valid SPIFFE ID: {exc.reason}") from None


def _trust_domain(section: Section, key: str, value: str) -> str:
    try:
        return parse_trust_domain(value)
    except InvalidSpiffeIdError as exc:
        raise section.error(key, exc.reason) from None


def _hint(s: Section, source: str) -> str | None:
    hint: str | None = s.string("hint", None)
    problem = _hint_problem(source, hint)
    if problem is not None:
        raise s.error("hint", problem)
    return hint


def _identity(s: Section, base: Path) -> IdentityConfig:
    source = s.choice("source", SOURCES, "workload-api")
    td = s.string("trust_domain", None)
    trust_domain = _trust_domain(s, "trust_domain", td) if td is not None else None
    federates = tuple(_trust_domain(s, "federates_with", t) for t in s.strings("federates_with", ()))
    cfg = IdentityConfig(
        source=source,
        socket=s.string("socket", None),
        trust_domain=trust_domain,
        timeout=s.duration("timeout", 10.0, **_limits("identity.timeout")),
        federates_with=federates,
        cert=_path(s, "cert", base),
        key=_path(s, "key", base),
        bundle=_path(s, "bundle", base),
        federated_bundles_dir=_path(s, "federated_bundles_dir", base),
        spiffe_id=_spiffe_id(s, "spiffe_id"),
        state_dir=_path(s, "state_dir", base),
        svid_ttl=dt.timedelta(seconds=s.duration("svid_ttl", 3600, **_limits("identity.svid_ttl"), whole=True)),
        hint=_hint(s, source),
        jwt_bundles_dir=_path(s, "jwt_bundles_dir", base),
    )
    if source == "files":
        for key in ("cert", "key", "bundle"):
            if getattr(cfg, key) is None:
                raise s.error(
                    key, "is required when source = \"files\" (PEM file written by spiffe-helper or the CSI driver)"
                )
    if cfg.spiffe_id is not None and trust_domain is not None and cfg.spiffe_id.trust_domain != trust_domain:
        raise s.error("spiffe_id", f"is outside trust_domain '{trust_domain}'")
    s.done()
    return cfg


def _authz(s: Section, base: Path) -> AuthzSettings:
    allow = s.strings("allow", ())
    for i, entry in enumerate(allow):
        if entry == "*":
            continue
        value = entry[:-2] if entry.endswith("/*") else entry
        try:
            parse_spiffe_id(value)
        except InvalidSpiffeIdError as exc:
            raise s.error("allow", f"item {i} {entry!r}: invalid SPIFFE ID: {exc.reason}") from None
    principal = s.choice("principal", PRINCIPALS, "mtls")
    jwt = s.choice("jwt", JWT_MODES, "required" if principal == "jwt" else "off")
    audiences = s.strings("jwt_audiences", ())
    forwarders: list[SpiffeID] = []
    for i, entry in enumerate(s.strings("jwt_forwarders", ())):
        try:
            forwarders.append(parse_spiffe_id(entry))
        except InvalidSpiffeIdError as exc:
            raise s.error("jwt_forwarders", f"item {i} {entry!r}: invalid SPIFFE ID: {exc.reason} "
                          "(list exact SPIFFE IDs of proxies)") from None
    problem = _authz_jwt_problem(jwt, audiences, principal, tuple(forwarders))
    if problem is not None:
        raise s.error(*problem)
    cfg = AuthzSettings(
        allow=allow,
        policy=_path(s, "policy", base),
        audit=s.choice("audit", AUDIT_CONDITIONS, "on_deny"),
        dry_run=s.boolean("dry_run", False),
        jwt=jwt,
        jwt_audiences=audiences,
        principal=principal,
        jwt_forwarders=tuple(forwarders),
    )
    s.done()
    return cfg


def _peer_jwt(s: Section, base: Path) -> dict[str, Any]:
    """The JWT keys of one [peers.NAME] table, checked with the table's key names in errors."""
    jwt = s.boolean("jwt", False)
    audience = s.string("jwt_audience", None)
    token_file = _path(s, "jwt_token_file", base)
    problem = _peer_jwt_problem(jwt, audience, token_file)
    if problem is not None:
        raise s.error(*problem)
    return {"jwt": jwt, "jwt_audience": audience, "jwt_token_file": token_file}


def _peer_endpoints(s: Section) -> tuple[str, tuple[str, ...] | None]:
    """``address`` or ``addresses``, checked against the grammar of :mod:`meshnode.config.targets`."""
    address: str | None = s.string("address", None)
    addresses: tuple[str, ...] | None = s.strings("addresses", None)
    if address is not None and addresses is not None:
        raise s.error("addresses", "and 'address' are both set: keep one (addresses lists endpoints)")
    key = "addresses" if addresses is not None else "address"
    try:
        endpoint_spec(address, addresses)
    except ConfigError as exc:
        raise s.error(exc.key or key, exc.reason) from None
    return address or "", addresses


def _peer(name: str, s: Section, default_verify: str, base: Path | None = None) -> PeerConfig:
    address, addresses = _peer_endpoints(s)
    spiffe_id = _spiffe_id(s, "spiffe_id")
    assert spiffe_id is not None
    retry_on = s.strings("retry_on", ("UNAVAILABLE",))
    for i, code in enumerate(retry_on):
        if code not in RETRYABLE_CODES:
            raise s.error("retry_on", f"item {i} {show(code)} is not one of {', '.join(RETRYABLE_CODES)}")
    if not retry_on:
        raise s.error("retry_on", "must list at least one status code (turn retries off with retries = 0)")
    timeout = s.number("timeout", None, minimum=PEER_TIMEOUT_RANGE[0], maximum=PEER_TIMEOUT_RANGE[1])
    peer = PeerConfig(
        name=name,
        address=address,
        spiffe_id=spiffe_id,
        verify=s.choice("verify", VERIFY_MODES, default_verify),
        server_name=s.string("server_name", None),
        addresses=addresses,
        lb=s.choice("lb", BALANCING, None),
        retries=s.integer("retries", 2, minimum=PEER_RETRIES_RANGE[0], maximum=PEER_RETRIES_RANGE[1]),
        retry_on=retry_on,
        timeout=timeout,
        **_peer_jwt(s, base or Path.cwd()),
    )
    if peer.verify == "spiffe-id" and peer.server_name is not None:
        raise s.error("server_name", 'applies only to verify = "dns" (spiffe-id peers are checked by their ID)')
    if peer.verify == "dns" and peer.server_name is None:
        try:
            dns_name_for(spiffe_id)
        except InvalidSpiffeIdError as exc:
            raise s.error("spiffe_id", exc.reason) from None
    s.done()
    return peer


def node_config_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "node.toml",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Build a NodeConfig from parsed TOML; ``environ`` overrides (default os.environ)."""
    env = os.environ if environ is None else environ
    base = base_dir or Path.cwd()
    root = Section(data, "", source, "config")
    node = root.section("node", required=True)
    name = node.string("name")
    listen = env.get(LISTEN_ENV) or node.string("listen", None)
    if env.get(LISTEN_ENV):
        node.string("listen", None)
    mode = node.choice("mode", MODES, "development")
    if env.get(MODE_ENV):
        mode = env[MODE_ENV]
        if mode not in MODES:
            raise ConfigError(f"config: {MODE_ENV}={mode!r} must be one of {', '.join(MODES)}")
    services = node.strings("services", ())
    for i, spec in enumerate(services):
        if not _SERVICE_SPEC.fullmatch(spec):
            raise node.error("services", f"item {i} {show(spec)} must look like 'package.module:ClassName'")
    shutdown_grace = node.duration("shutdown_grace", 5.0, **_limits("node.shutdown_grace"))
    peer_verify = node.choice("peer_verify", VERIFY_MODES, "spiffe-id")
    keepalive = node.duration("keepalive", 10.0, **_limits("node.keepalive"))
    if 0 < keepalive < 1:
        raise node.error("keepalive", f"must be 0 (off) or at least 1 second, not {keepalive}")
    connect_timeout = node.duration("connect_timeout", 5.0, **_limits("node.connect_timeout"))
    max_connection_age = node.duration("max_connection_age", 600.0, **_limits("node.max_connection_age"))
    handshake_timeout = node.duration("handshake_timeout", 5.0)
    max_connections = node.integer("max_connections", 2048)
    log_format = env_log_format(env) or node.choice("log_format", LOG_FORMATS, "text")
    if env_log_format(env):
        node.choice("log_format", LOG_FORMATS, None)
    problem = _limit_problem(handshake_timeout, max_connections)
    if problem is not None:
        raise node.error(*problem)
    node.done()
    identity = _identity(root.section("identity"), base)
    if identity.spiffe_id is None:  # the dev identity (and the development fallback) is .../node/<name>
        dev_id = f"spiffe://{identity.trust_domain or DEFAULT_DEV_TRUST_DOMAIN}/node/{name}"
        try:
            parse_spiffe_id(dev_id)
        except InvalidSpiffeIdError as exc:
            raise node.error(
                "name", f"{show(name)} cannot name the dev identity {show(dev_id, 120)} ({exc.reason}): use letters, "
                "digits, '.', '-' and '_', or set [identity] spiffe_id"
            ) from None
    authz = _authz(root.section("authz"), base)
    peers = {n: _peer(n, s, peer_verify, base) for n, s in root.sections("peers").items()}
    for peer_name in peers:
        if not peer_name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"config: {source}: peer name {peer_name!r} may hold only letters, digits, '-' and '_'")
    telemetry = telemetry_settings_from_section(root.section("telemetry"))
    if telemetry.prometheus is not None:
        try:
            parse_address(telemetry.prometheus, "prometheus")
        except ConfigError as exc:
            raise ConfigError(f"config: {source}: 'telemetry.prometheus' {exc.reason}", reason=exc.reason,
                              key="telemetry.prometheus", path=source) from None
    if telemetry.jsonl_path is not None and not Path(telemetry.jsonl_path).is_absolute():
        telemetry = dataclasses.replace(telemetry, jsonl_path=str(base / telemetry.jsonl_path))
    root.done()
    try:
        return NodeConfig(
            name=name, listen=listen, mode=mode, services=services, shutdown_grace=shutdown_grace,
            peer_verify=peer_verify, keepalive=keepalive, connect_timeout=connect_timeout,
            max_connection_age=max_connection_age, handshake_timeout=handshake_timeout,
            max_connections=max_connections, identity=identity,
            authz=authz, peers=peers, telemetry=telemetry,
            source_path=None, log_format=log_format,
        )
    except ConfigError as exc:
        raise ConfigError(f"config: {source}: {exc.reason}", reason=exc.reason, key=exc.key, path=source) from None


def load_node_config(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Load and validate node.toml; raises ConfigError naming the file and key."""
    p = Path(path)
    data = load_toml(p, "config")
    cfg = node_config_from_dict(data, source=str(p), base_dir=p.resolve().parent, environ=environ)
    object.__setattr__(cfg, "source_path", p)
    return cfg
