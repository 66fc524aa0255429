"""A real DNS server for tests, on 127.0.0.1 (UDP), whose answers the test changes.

It answers A and AAAA questions for the names it was given (TTL 1 s, so a
resolver that honours TTLs asks again every second) and NXDOMAIN for any
other name. gRPC's resolver is pointed at it with a target's authority,
``dns://127.0.0.1:PORT/name:port``; nothing on the machine changes.

``queries`` counts the questions per name, so a test can wait for a
resolver to have asked again after a change instead of sleeping.
"""

from __future__ import annotations

import collections
import ipaddress
import selectors
import socket
import threading
from collections.abc import Iterable

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

__all__ = ["DnsServer"]


class DnsServer:
    """``DnsServer({"api.test": ["127.0.0.2", "127.0.0.3"]})``; ``set(name, addresses)`` changes the answer."""

    def __init__(self, records: dict[str, Iterable[str]] | None = None, ttl: int = 1) -> None:
        self._lock = threading.Lock()
        self._records = {name.rstrip(".").lower(): list(ips) for name, ips in (records or {}).items()}
        self.ttl = ttl
        self.queries: collections.Counter[str] = collections.Counter()
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self.port = self._udp.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-dns")
        self._thread.start()

    def authority(self, name: str, port: int) -> str:
        """The gRPC target that resolves ``name`` here: ``dns://127.0.0.1:PORT/name:port``."""
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def set(self, name: str, addresses: Iterable[str]) -> None:
        with self._lock:
            self._records[name.rstrip(".").lower()] = list(addresses)

    def asked(self, name: str) -> int:
        with self._lock:
            return self.queries[name.rstrip(".").lower()]

    def answer(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with self._lock:
            self.queries[name] += 1
            addresses = self._records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return bytes(reply.pack())
        for address in addresses:
            version = ipaddress.ip_address(address).version
            if request.q.qtype == QTYPE.A and version == 4:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=self.ttl))
            elif request.q.qtype == QTYPE.AAAA and version == 6:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=self.ttl))
        return bytes(reply.pack())

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ)
            while not self._stop.is_set():
                for _key, _ in selector.select(timeout=0.1):
                    try:
                        data, peer = self._udp.recvfrom(4096)
                        self._udp.sendto(self.answer(data), peer)
                    except Exception:  # a malformed question must not end the server
                        continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._udp.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
