"""Where a peer's endpoints are: the grammar of ``[peers.NAME] address`` and ``addresses``.

A peer is a *service*: one SPIFFE ID, any number of endpoints. Its
configuration names them in one of these forms (:func:`endpoint_spec`):

===================================== ============ =========================================
form                                  kind         endpoints
===================================== ============ =========================================
``address = "host:port"``             ``single``   one, as before: gRPC resolves ``host`` on
                                                   each connect and takes the first address
                                                   that answers
``address = "dns:///host:port"``      ``dns``      every A/AAAA record of ``host``, re-resolved
``address = "dns://IP:53/host:port"`` ``dns``      the same, asking that DNS server
``address = "ipv4:h1:p1,h2:p2"``      ``static``   these IPv4 endpoints
``address = "ipv6:[a]:p,[b]:p"``      ``static``   these IPv6 endpoints
``addresses = ["h1:p1", "h2:p2"]``    ``static``   these endpoints; a host name among them
                                                   stands for every address it resolves to
===================================== ============ =========================================

Parsing only: nothing here resolves a name (see :mod:`meshnode.resolver`).
Errors are :class:`~meshnode.errors.ConfigError` whose ``key`` is
``address`` or ``addresses`` and whose ``reason`` says what is wrong with
it (the reader puts the table in front).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from meshnode.errors import ConfigError

__all__ = ["MAX_ENDPOINTS", "EndpointSpec", "HostPort", "endpoint_spec", "parse_host_port"]

#: The most endpoints one peer may have, configured or resolved (a DNS answer beyond it is cut).
MAX_ENDPOINTS = 256

Kind = Literal["single", "static", "dns"]


@dataclass(frozen=True, order=True)
class HostPort:
    """One endpoint as configured or resolved: a host name or IP literal (no brackets) and a port."""

    host: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address, or None for a name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _bad(key: str, reason: str) -> ConfigError:
    return ConfigError(f"{key} {reason}", reason=reason, key=key)


def parse_host_port(value: str, *, allow_zero_port: bool = False) -> HostPort:
    """``host:port`` or ``[v6]:port`` -> HostPort; raises ConfigError (``reason``: what is wrong)."""
    host, sep, port_text = value.rpartition(":")
    # isdigit() alone accepts '²' and other digits int() refuses; five ASCII digits at most
    if not sep or not host or not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ConfigError(f"{_show(value)} is not host:port (e.g. 127.0.0.1:7001)")
    port = int(port_text)
    if not 0 <= port <= 65535 or (port == 0 and not allow_zero_port):
        raise ConfigError(f"{_show(value)}: port {port} is out of range (1-65535)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"{_show(value)}: unbalanced '[' in the IPv6 address")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{_show(value)}: {host} is not an IPv6 address") from None
        return HostPort(host[1:-1], port)
    if ":" in host:
        raise ConfigError(f"{_show(value)}: write IPv6 addresses as [addr]:port")
    if len(host) > 253 or not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
        raise ConfigError(f"{_show(value)}: {host!r} is not a host name or IP address")
    return HostPort(host, port)


@dataclass(frozen=True)
class EndpointSpec:
    """A peer's endpoints as configured: see the module docstring for the kinds."""

    kind: Kind
    hosts: tuple[HostPort, ...]  # single: one; static: the list; dns: the one name to resolve
    authority: HostPort | None = None  # dns: the DNS server to ask (None: the system's resolver)
    text: str = ""  # as configured, for messages

    @property
    def resolved_by_meshnode(self) -> bool:
        """Whether meshnode resolves the endpoints (a dns target, or names in a static list)."""
        return self.kind == "dns" or (self.kind == "static" and any(h.ip is None for h in self.hosts))

    @property
    def can_be_several(self) -> bool:
        """Whether the peer can have more than one endpoint (then the default balancing is round robin)."""
        return self.kind == "dns" or len(self.hosts) > 1 or (self.kind == "static" and self.resolved_by_meshnode)


def _show(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _static(kind_text: str, body: str, family: int) -> tuple[HostPort, ...]:
    items = body.split(",")
    if len(items) > MAX_ENDPOINTS:
        raise ConfigError(f"{kind_text} lists {len(items)} endpoints; at most {MAX_ENDPOINTS}")
    out = []
    for item in items:
        hp = parse_host_port(item.strip())
        ip = hp.ip
        if ip is None or ip.version != family:
            raise ConfigError(f"{_show(item.strip())} in {kind_text} is not an IPv{family} address with a port")
        out.append(hp)
    return tuple(dict.fromkeys(out))


def _dns(value: str) -> EndpointSpec:
    rest = value[len("dns:"):]
    if not rest.startswith("//"):
        raise ConfigError(f"{_show(value)}: write dns:///host:port (or dns://DNS-SERVER-IP:PORT/host:port)")
    authority_text, slash, name = rest[2:].partition("/")
    if not slash:
        raise ConfigError(f"{_show(value)}: write dns:///host:port (or dns://DNS-SERVER-IP:PORT/host:port)")
    authority = None
    if authority_text:
        has_port = "]:" in authority_text if authority_text.startswith("[") else ":" in authority_text
        authority = parse_host_port(authority_text if has_port else f"{authority_text}:53")
        if authority.ip is None:
            raise ConfigError(f"{_show(value)}: the DNS server {authority_text!r} must be an IP address")
    target = parse_host_port(name)
    return EndpointSpec("dns", (target,), authority, value)


def endpoint_spec(address: str | None, addresses: tuple[str, ...] | None) -> EndpointSpec:
    """Parse ``address`` or ``addresses`` (exactly one of them); raises ConfigError."""
    if address is not None and addresses is not None:
        raise _bad("addresses", "and address are both set: keep one (addresses lists endpoints)")
    if addresses is not None:
        if not addresses:
            raise _bad("addresses", "is empty: list at least one host:port")
        if len(addresses) > MAX_ENDPOINTS:
            raise _bad("addresses", f"lists {len(addresses)} endpoints; at most {MAX_ENDPOINTS}")
        hosts = []
        for i, item in enumerate(addresses):
            if "://" in item or item.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
                raise _bad("addresses", f"item {i} {_show(item)} must be host:port (targets go in address)")
            try:
                hosts.append(parse_host_port(item))
            except ConfigError as exc:
                raise _bad("addresses", f"item {i} {exc.reason}") from None
        return EndpointSpec("static", tuple(dict.fromkeys(hosts)), None, ", ".join(addresses))
    if address is None:
        raise _bad("address", "is required (host:port, dns:///host:port, ipv4:..., or use addresses)")
    try:
        return _address(address)
    except ConfigError as exc:
        raise _bad("address", exc.reason) from None


def _address(address: str) -> EndpointSpec:
    if address.startswith("dns:"):
        return _dns(address)
    if address.startswith("ipv4:"):
        return EndpointSpec("static", _static("ipv4:", address[5:], 4), None, address)
    if address.startswith("ipv6:"):
        return EndpointSpec("static", _static("ipv6:", address[5:], 6), None, address)
    scheme, _, rest = address.partition(":")
    if "://" in address or (scheme.isalpha() and not rest.isdigit()):
        raise ConfigError(f"{_show(address)}: the target scheme {scheme!r} is not supported "
                          "(host:port, dns:///host:port, ipv4:..., ipv6:...)")
    return EndpointSpec("single", (parse_host_port(address),), None, address)
