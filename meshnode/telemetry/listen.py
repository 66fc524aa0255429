"""Whether the metrics endpoint can listen on its address, and what to say when it cannot.

The boot plan (:mod:`meshnode.boot`, so ``meshnode check`` too) probes the
address once: it resolves the host and binds the port (then lets it go), so
a bad value (exit 2) or a port in use (exit 4) is reported before anything
serves. :class:`~meshnode.telemetry.prometheus.MetricsEndpoint` maps a
failure of its real bind the same way.
"""

from __future__ import annotations

import errno
import socket

from meshnode.errors import ConfigError, MeshnodeError, ServeError

__all__ = ["bind_error", "probe_listen", "resolve_listen"]


def resolve_listen(host: str, port: int) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """(address family, socket address) to bind ``host:port``; ConfigError when the host does not resolve."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(
            reason=f"[telemetry] prometheus: cannot resolve {bare!r} ({reason}); use an address of this machine",
            component="metrics", key="telemetry.prometheus", value=host,
        ) from None
    family, _, _, _, address = infos[0]
    return family, tuple(address)


def bind_error(where: str, exc: OSError) -> MeshnodeError:
    """The error a failed bind of the metrics endpoint stands for: in use -> ServeError, else ConfigError."""
    if exc.errno == errno.EADDRINUSE:
        return ServeError(
            reason=f"cannot serve Prometheus metrics on {where}: the address is in use; "
            "stop whatever uses it or change [telemetry] prometheus",
            component="metrics", key="telemetry.prometheus", value=where,
        )
    return ConfigError(
        reason=f"cannot serve Prometheus metrics on {where}: {exc.strerror or exc}; "
        "set [telemetry] prometheus to an address of this machine (e.g. 127.0.0.1:9464)",
        component="metrics", key="telemetry.prometheus", value=where,
    )


def probe_listen(host: str, port: int) -> MeshnodeError | None:
    """Bind ``host:port`` once and release it: None when that works, else the error serving would raise."""
    try:
        family, address = resolve_listen(host, port)
    except ConfigError as exc:
        return exc
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the endpoint's server does
            probe.bind(address)
    except OSError as exc:
        return bind_error(f"{host}:{port}", exc)
    return None
