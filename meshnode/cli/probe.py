"""``meshnode probe [ADDRESS]``: is the node at ADDRESS serving? For exec readiness/liveness probes.

Fetches this process's X509-SVID from the SPIFFE Workload API (in a pod:
the pod's own identity, which is the node's), connects to ADDRESS (default
127.0.0.1:7001) over mTLS with it, and calls grpc.health.v1.Health/Check.
The server is verified with the SVID's own trust domain bundle and by the
DNS name meshnode maps the SVID's SPIFFE ID to (``meshnode dns-name``):
the node in the same pod has the same registration entry, so its SVID
carries that name when the entry has it (a ``ClusterSPIFFEID`` with
``dnsNameTemplates``, as deploy/kubernetes has). ``--server-name`` names
another DNS SAN to verify.

The Workload API socket comes from --socket or SPIFFE_ENDPOINT_SOCKET.

Exit status: 0 SERVING; 1 anything else (NOT_SERVING, UNKNOWN, the node
cannot be reached, the TLS handshake fails), with one line on stderr
saying why; 2 invalid arguments or socket address; 3 no identity from the
Workload API.

Kubernetes runs an exec probe every few seconds for the life of the pod,
so this command starts fast: it loads grpc and the health stubs, not
cryptography, OpenTelemetry or py-spiffe (the Workload API messages are
built here in a private protobuf descriptor pool, so they cannot clash
with py-spiffe's copy).
"""

from __future__ import annotations

import argparse
import base64
import os
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

from meshnode.config.duration import duration_argument
from meshnode.errors import ConfigError, IdentityUnavailableError, InvalidIdentityError, PeerError

#: The environment variable every SPIFFE client reads for the Workload API address.
ENDPOINT_SOCKET_ENV = "SPIFFE_ENDPOINT_SOCKET"
DEFAULT_ADDRESS = "127.0.0.1:7001"
_FETCH_X509_SVID = "/SpiffeWorkloadAPI/FetchX509SVID"
_WORKLOAD_HEADER = ("workload.spiffe.io", "true")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("probe", help="exit 0 when the node at ADDRESS reports SERVING (mTLS with this pod's SVID)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("address", nargs="?", default=DEFAULT_ADDRESS, metavar="ADDRESS",
                   help=f"host:port of the node (default {DEFAULT_ADDRESS})")
    p.add_argument("--socket", metavar="ADDR", help=f"Workload API address (default: ${ENDPOINT_SOCKET_ENV})")
    p.add_argument("--service", default="", help="the health service name to check (default: the whole server)")
    p.add_argument("--server-name", metavar="DNS_NAME",
                   help="the DNS SAN the node's certificate must carry (default: the name mapped from this "
                   "process's SPIFFE ID)")
    p.add_argument("--timeout", type=duration_argument, default=3.0, metavar="DURATION",
                   help="give up after this long, identity and call together (default 3)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Svid:
    """The first X509-SVID the Workload API handed out, as PEM for grpcio."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise ConfigError("probe: --timeout must be a positive number of seconds")
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"probe: invalid ADDRESS {args.address!r}: expected host:port, e.g. {DEFAULT_ADDRESS}")
    deadline = time.monotonic() + args.timeout
    # the one line below says what failed; gRPC core would add its own handshake log lines to the
    # probe's output (what the kubelet shows in the pod's events). GRPC_VERBOSITY, when set, wins.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    raw = args.socket if args.socket is not None else os.environ.get(ENDPOINT_SOCKET_ENV)
    svid = fetch_svid(_socket_address(raw), deadline)
    from meshnode.spiffeid import dns_name_for

    server_name = args.server_name or dns_name_for(svid.spiffe_id)
    try:
        status = check_health(args.address, svid, server_name, args.service, deadline)
    except PeerError as exc:
        print(f"meshnode: {exc}", file=sys.stderr)
        return 1
    if status != "SERVING":
        what = f"service {args.service!r}" if args.service else "the node"
        print(f"meshnode: probe: {args.address}: {what} is {status}", file=sys.stderr)
        return 1
    return 0


def _socket_address(raw: str | None) -> str:
    if not raw:
        raise ConfigError(
            f"probe: no Workload API socket: pass --socket unix:///path/to/agent.sock or set {ENDPOINT_SOCKET_ENV}"
        )
    if raw.startswith("/"):
        return "unix:" + raw
    if not raw.startswith("unix:"):
        raise ConfigError(f"probe: invalid Workload API address {raw!r}: expected unix:///path/to/agent.sock")
    return raw


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


def fetch_svid(address: str, deadline: float) -> Svid:
    """The first X509-SVID (and its trust domain's bundle) from the Workload API at ``address``."""
    import grpc

    request_type, response_type = _workload_messages()
    path = "/" + address.removeprefix("unix:").lstrip("/")
    if not os.path.exists(path):
        raise IdentityUnavailableError(
            f"probe: the Workload API socket {path} does not exist (is the agent running, and the socket mounted?)"
        )
    with grpc.insecure_channel(address) as channel:  # a unix socket to the local agent, as every SPIFFE client
        fetch = channel.unary_stream(_FETCH_X509_SVID, request_serializer=request_type.SerializeToString,
                                     response_deserializer=response_type.FromString)
        stream = fetch(request_type(), timeout=_left(deadline), metadata=[_WORKLOAD_HEADER])
        try:
            response = next(iter(stream))
        except grpc.RpcError as exc:
            raise IdentityUnavailableError(
                f"probe: no SVID from the Workload API at {path}: {exc.code().name}: {exc.details()}"
            ) from None
        except StopIteration:
            raise IdentityUnavailableError(f"probe: the Workload API at {path} closed the stream without an SVID") \
                from None
        finally:
            stream.cancel()
    if not response.svids:
        raise IdentityUnavailableError(f"probe: the Workload API at {path} sent no SVID")
    first = response.svids[0]
    return Svid(
        spiffe_id=first.spiffe_id,
        chain_pem=_pem_certificates(first.x509_svid, "x509_svid"),
        key_pem=_pem("PRIVATE KEY", first.x509_svid_key),
        bundle_pem=_pem_certificates(first.bundle, "bundle"),
    )


def check_health(address: str, svid: Svid, server_name: str, service: str, deadline: float) -> str:
    """The status name grpc.health.v1.Health/Check answers at ``address``, over mTLS with ``svid``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=svid.bundle_pem, private_key=svid.key_pem, certificate_chain=svid.chain_pem
    )
    options = [("grpc.ssl_target_name_override", server_name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=_left(deadline)
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise PeerError(
                f"probe: {address}: {exc.code().name}: {exc.details()} (verifying the server as {server_name}, "
                f"client {svid.spiffe_id})"
            ) from None
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name


def _pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode("ascii")


def _pem_certificates(blob: bytes, field: str) -> bytes:
    """Concatenated DER certificates (the Workload API's encoding) as concatenated PEM."""
    pems: list[str] = []
    rest = memoryview(blob)
    while rest:
        size = _der_size(rest)
        if size is None or size > len(rest):
            raise InvalidIdentityError(f"probe: the Workload API sent a malformed {field} (not DER certificates)")
        pems.append(ssl.DER_cert_to_PEM_cert(bytes(rest[:size])))
        rest = rest[size:]
    if not pems:
        raise InvalidIdentityError(f"probe: the Workload API sent an empty {field}")
    return "".join(pems).encode("ascii")


def _der_size(data: memoryview) -> int | None:
    """The length of the DER SEQUENCE at the start of ``data``, header included."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count:
        return None
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")


def _workload_messages() -> tuple[Any, Any]:
    """X509SVIDRequest and X509SVIDResponse of the SPIFFE Workload API (workload.proto), in a private pool.

    Only the fields the probe reads are declared; the others (crl, federated_bundles) are kept as
    unknown fields and ignored.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="meshnode_probe_workload.proto", syntax="proto3")
    proto.message_type.add(name="X509SVIDRequest")
    svid = proto.message_type.add(name="X509SVID")
    for number, name, kind in ((1, "spiffe_id", fdp.TYPE_STRING), (2, "x509_svid", fdp.TYPE_BYTES),
                               (3, "x509_svid_key", fdp.TYPE_BYTES), (4, "bundle", fdp.TYPE_BYTES)):
        svid.field.add(name=name, number=number, type=kind, label=fdp.LABEL_OPTIONAL)
    response = proto.message_type.add(name="X509SVIDResponse")
    response.field.add(name="svids", number=1, type=fdp.TYPE_MESSAGE, type_name=".X509SVID",
                       label=fdp.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("X509SVIDRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("X509SVIDResponse")))
