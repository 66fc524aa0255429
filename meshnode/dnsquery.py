"""A minimal DNS client: the A or AAAA records of one name, asked of one server.

For peers configured as ``dns://SERVER/host:port`` meshnode asks that server
itself, as gRPC's c-ares resolver does (the system resolver cannot be
pointed at a server). It sends one question over UDP (with an EDNS0 OPT
record offering 4096 bytes), and again over TCP when the answer comes back
truncated; it reads the address records of the answer section (following
CNAMEs is the server's job: every A/AAAA record in the answer counts) and
the smallest TTL among them.

Everything in a reply is untrusted: a reply from another address, with
another ID or question, or that does not parse within its own length is
refused with a :class:`~meshnode.errors.PeerError` (never another exception). DNS is not what
makes a peer trusted, the handshake is: a forged answer can only point the
node at endpoints whose certificates then fail.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from meshnode.errors import PeerError

__all__ = ["AAAA", "A", "Answer", "build_query", "parse_reply", "query"]

A = 1
AAAA = 28
_OPT = 41
_CLASS_IN = 1
_MAX_UDP = 4096
_MAX_NAME = 253
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


def _error(reason: str) -> PeerError:
    return PeerError(reason=reason, component="dns")


@dataclass(frozen=True)
class Answer:
    """The addresses of an answer, in the order given, and the smallest TTL (None: no record)."""

    addresses: tuple[str, ...]
    ttl: int | None
    truncated: bool = False


def _encode_name(name: str) -> bytes:
    labels = name.rstrip(".").split(".")
    if not name.strip(".") or len(name.rstrip(".")) > _MAX_NAME:
        raise _error(f"{name!r} is not a name to ask about")
    out = bytearray()
    for label in labels:
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise _error(f"{name!r} has an empty or too long label")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def build_query(ident: int, name: str, rtype: int) -> bytes:
    """One question (recursion desired) with an EDNS0 OPT record offering a 4096-byte UDP reply."""
    header = _HEADER.pack(ident, 0x0100, 1, 0, 0, 1)
    question = _encode_name(name) + struct.pack("!HH", rtype, _CLASS_IN)
    opt = b"\0" + struct.pack("!HHIH", _OPT, _MAX_UDP, 0, 0)
    return header + question + opt


def _skip_name(data: bytes, at: int) -> int:
    """The offset after the (possibly compressed) name at ``at``."""
    for _ in range(128):  # a name has at most 127 labels: no pointer loop can hold us
        if at >= len(data):
            raise _error("a name runs past the end of the reply")
        length = data[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            if at + 2 > len(data):
                raise _error("a name pointer runs past the end of the reply")
            return at + 2
        if length & 0xC0:
            raise _error("a label of an unknown kind")
        at += 1 + length
    raise _error("a name with too many labels")


def parse_reply(data: bytes, ident: int, question: bytes, rtype: int) -> Answer:
    """The address records of ``data``, the reply to ``question`` (its wire form) with ID ``ident``."""
    if len(data) < _HEADER.size:
        raise _error("a reply shorter than a DNS header")
    rid, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(data)
    if rid != ident or not flags & 0x8000:
        raise _error("a reply to another question")
    rcode = flags & 0x000F
    if rcode == 3:
        return Answer((), None)  # NXDOMAIN: the name has no endpoints now
    if rcode != 0:
        raise _error(f"the server answered with error code {rcode}")
    truncated = bool(flags & 0x0200)
    at = _HEADER.size
    if qdcount != 1 or data[at:at + len(question)].lower() != question.lower():
        raise _error("the reply does not repeat the question")
    at += len(question)
    size = 4 if rtype == A else 16
    addresses: list[str] = []
    ttl: int | None = None
    for _ in range(ancount):
        at = _skip_name(data, at)
        if at + _RR.size > len(data):
            if truncated:
                break
            raise _error("a record runs past the end of the reply")
        kind, klass, rr_ttl, rdlength = _RR.unpack_from(data, at)
        at += _RR.size
        if at + rdlength > len(data):
            if truncated:
                break
            raise _error("record data runs past the end of the reply")
        if kind == rtype and klass == _CLASS_IN and rdlength == size:
            raw = data[at:at + rdlength]
            addresses.append(str(ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)))
            ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
        at += rdlength
    return Answer(tuple(dict.fromkeys(addresses)), ttl, truncated)


def _udp(server: tuple[str, int], payload: bytes, family: int, deadline: float) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(server)  # the kernel drops datagrams from any other address
        sock.send(payload)
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(_MAX_UDP + 512)
            if data[:2] == payload[:2]:
                return data


def _tcp(server: tuple[str, int], payload: bytes, deadline: float) -> bytes:
    with socket.create_connection(server, timeout=max(deadline - time.monotonic(), 0.001)) as sock:
        sock.sendall(struct.pack("!H", len(payload)) + payload)
        want = struct.unpack("!H", _read(sock, 2, deadline))[0]
        return _read(sock, want, deadline)


def _read(sock: socket.socket, count: int, deadline: float) -> bytes:
    out = bytearray()
    while len(out) < count:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(count - len(out))
        if not chunk:
            raise _error("the server closed the TCP connection mid-reply")
        out += chunk
    return bytes(out)


def query(server: tuple[str, int], name: str, rtype: int, timeout: float = 3.0) -> Answer:
    """Ask ``server`` (IP, port) for the ``rtype`` records of ``name``; blocking, raises PeerError."""
    ident = secrets.randbelow(1 << 16)
    payload = build_query(ident, name, rtype)
    question = payload[_HEADER.size:payload.index(b"\0", _HEADER.size) + 5]
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    where = f"{server[0]}:{server[1]}"
    try:
        answer = parse_reply(_udp(server, payload, family, deadline), ident, question, rtype)
        if answer.truncated:
            answer = parse_reply(_tcp(server, payload, deadline), ident, question, rtype)
    except TimeoutError:
        raise _error(f"no answer from {where} within {timeout:g} s for {name}") from None
    except OSError as exc:
        raise _error(f"cannot ask {where} about {name}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeError, struct.error) as exc:  # malformed input the checks above let through
        raise _error(f"a malformed reply from {where}: {exc}") from None
    return answer
