"""``meshnode svid [--socket ADDR]``: print the identity the Workload API hands this process.

Fetches the current X509-SVID and bundles through the SPIFFE Workload API
(meshnode's dev agent, a SPIRE agent, ...) with py-spiffe and prints JSON:
spiffe_id, dns_names, not_after, serial, chain_length, trust_domains, socket.

ADDR is unix:///path/to/agent.sock (a bare /path works too); the default
is the SPIFFE_ENDPOINT_SOCKET environment variable.

Exit status: 0 printed; 2 no or invalid socket address; 3 no identity
(socket missing, nobody listening, no registration entry, timeout).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from meshnode.config.duration import duration_argument
from meshnode.errors import ConfigError, IdentityError, IdentityUnavailableError, InvalidIdentityError

if TYPE_CHECKING:
    from spiffe.errors import PySpiffeError
    from spiffe.workloadapi.x509_context import X509Context

#: The environment variable every SPIFFE client reads for the Workload API address.
ENDPOINT_SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("svid", help="fetch this process's SVID from the Workload API and print it as JSON",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", metavar="ADDR", help=f"Workload API address (default: ${ENDPOINT_SOCKET_ENV})")
    p.add_argument("--timeout", type=duration_argument, default=5.0, metavar="DURATION",
                   help="give up after this long (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    address = _address(args.socket if args.socket is not None else os.environ.get(ENDPOINT_SOCKET_ENV))
    print(json.dumps(describe(fetch_x509_context(address, args.timeout), address), indent=2))
    return 0


def _address(raw: str | None) -> str:
    if not raw:
        raise ConfigError(
            f"svid: no Workload API socket: pass --socket unix:///path/to/agent.sock or set {ENDPOINT_SOCKET_ENV}"
        )
    return f"unix:{raw}" if raw.startswith("/") else raw


def _path(address: str) -> str:
    path = address.removeprefix("unix:")
    return "/" + path.lstrip("/") if path.startswith("/") else path


def fetch_x509_context(address: str, timeout: float) -> X509Context:
    """One X509 context from the Workload API at ``address``; errors name the socket and the fix."""
    from spiffe import WorkloadApiClient
    from spiffe.errors import ArgumentError, PySpiffeError

    path = _path(address)
    try:
        client = WorkloadApiClient(address, default_timeout=timeout)
    except ArgumentError as exc:
        if address.startswith("unix:") and not os.path.exists(path):
            raise IdentityUnavailableError(
                f"svid: the Workload API socket {path} does not exist; start the agent "
                f"(meshnode agent --config agent.toml) or point --socket/{ENDPOINT_SOCKET_ENV} at its socket"
            ) from None
        raise ConfigError(f"svid: invalid Workload API address {address!r}: {exc}") from None
    with client:
        try:
            return client.fetch_x509_context()
        except PySpiffeError as exc:
            raise _translate(exc, path, timeout) from None


def _translate(exc: PySpiffeError, path: str, timeout: float) -> IdentityError:
    import grpc

    cause = exc.__cause__
    if not isinstance(cause, grpc.RpcError):
        return InvalidIdentityError(f"svid: the Workload API on {path} sent an unusable X509-SVID: {exc}")
    code, details = cause.code(), cause.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return IdentityUnavailableError(
            f"svid: nobody is listening on {path} (the socket file exists, but no agent accepts "
            "connections on it); start the agent"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return IdentityUnavailableError(
            f"svid: the agent on {path} has no registration entry for this process ({details}); "
            f"add an entry for it (this process runs as uid {os.getuid()}) or use another socket"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return IdentityUnavailableError(f"svid: no answer from {path} within {timeout:g} s; is the agent healthy?")
    return IdentityUnavailableError(f"svid: the Workload API on {path} refused the request: {code.name}: {details}")


def describe(context: X509Context, address: str) -> dict[str, Any]:
    """What ``meshnode svid`` prints for an X509 context."""
    from cryptography import x509

    svid = context.default_svid
    try:
        dns = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = dns.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    return {
        "spiffe_id": str(svid.spiffe_id),
        "dns_names": dns_names,
        "not_after": svid.leaf.not_valid_after_utc.isoformat(),
        "serial": format(svid.leaf.serial_number, "x"),
        "chain_length": len(svid.cert_chain),
        "trust_domains": sorted(str(bundle.trust_domain) for bundle in context.x509_bundle_set.bundles),
        "socket": address,
    }
