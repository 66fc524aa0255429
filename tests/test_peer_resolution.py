"""Resolving a peer's endpoints: meshnode's DNS client against a real DNS server, the system
resolver, and the watch that keeps an endpoint list current.

The DNS server (tests/support/dns_server.py) is a real UDP server on
127.0.0.1 whose answers the tests change. Everything in a DNS reply is
untrusted input: any byte string either parses or is refused with a
PeerError (hypothesis).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.config.targets import EndpointSpec, HostPort, endpoint_spec
from meshnode.dnsquery import AAAA, A, build_query, parse_reply, query
from meshnode.endpoint_watch import EndpointWatch
from meshnode.errors import PeerError
from meshnode.resolver import MIN_TTL, Resolution, resolve
from tests.support.dns_server import DnsServer
from tests.support.wait import eventually_async


def test_a_dns_server_answers_every_address_with_its_ttl() -> None:
    with DnsServer({"api.test": ["127.0.0.2", "127.0.0.3", "::2"]}, ttl=7) as dns:
        v4 = query(("127.0.0.1", dns.port), "api.test", A)
        v6 = query(("127.0.0.1", dns.port), "API.test.", AAAA)
        missing = query(("127.0.0.1", dns.port), "nothing.test", A)
    assert (v4.addresses, v4.ttl) == (("127.0.0.2", "127.0.0.3"), 7)
    assert v6.addresses == ("::2",)
    assert (missing.addresses, missing.ttl) == ((), None)  # NXDOMAIN: no endpoints now, not an error


def test_a_server_that_does_not_answer_is_an_error_naming_it() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    address = silent.getsockname()
    with silent, pytest.raises(PeerError) as info:
        query(address, "api.test", A, timeout=0.2)
    assert str(info.value) == f"dns: no answer from 127.0.0.1:{address[1]} within 0.2 s for api.test"


def test_resolve_takes_every_address_of_a_dns_target_in_order() -> None:
    with DnsServer({"api.test": ["127.0.0.2", "127.0.0.3"]}) as dns:
        spec = endpoint_spec(dns.authority("api.test", 7001), None)
        found = resolve(spec)
        dns.set("api.test", ["127.0.0.4"])
        again = resolve(spec)
    assert found.endpoints == (HostPort("127.0.0.2", 7001), HostPort("127.0.0.3", 7001))
    assert found.ttl == MIN_TTL  # the server's TTL of 1 s
    assert again.endpoints == (HostPort("127.0.0.4", 7001),)


def test_resolve_uses_the_system_resolver_without_an_authority() -> None:
    found = resolve(endpoint_spec(None, ("localhost:7001", "10.1.2.3:7002")))
    assert HostPort("10.1.2.3", 7002) in found.endpoints
    assert {e.host for e in found.endpoints} & {"127.0.0.1", "::1"}
    assert resolve(endpoint_spec("dns:///no-such-name.invalid:7001", None)).endpoints == ()


def test_a_dns_server_that_is_down_fails_the_resolution() -> None:
    with DnsServer() as dns:
        spec = endpoint_spec(dns.authority("api.test", 1), None)
    with pytest.raises(PeerError, match="resolver: "):
        resolve(spec, timeout=0.3)


def _reply(ident: int, question: bytes, answers: list[tuple[int, bytes]], flags: int = 0x8180) -> bytes:
    out = struct.pack("!HHHHHH", ident, flags, 1, len(answers), 0, 0) + question
    for rtype, data in answers:
        out += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(data)) + data
    return out


def test_replies_to_another_question_are_refused() -> None:
    query_bytes = build_query(7, "api.test", A)
    question = query_bytes[12:query_bytes.index(b"\0", 12) + 5]
    good = _reply(7, question, [(A, bytes([10, 0, 0, 1]))])
    assert parse_reply(good, 7, question, A).addresses == ("10.0.0.1",)
    with pytest.raises(PeerError, match="another question"):
        parse_reply(_reply(8, question, [(A, bytes(4))]), 7, question, A)
    other = build_query(7, "evil.test", A)
    with pytest.raises(PeerError, match="does not repeat the question"):
        parse_reply(_reply(7, other[12:other.index(b"\0", 12) + 5], [(A, bytes(4))]), 7, question, A)
    with pytest.raises(PeerError, match="error code 2"):
        parse_reply(_reply(7, question, [], flags=0x8182), 7, question, A)
    # records of another type or size are skipped, not taken
    assert parse_reply(_reply(7, question, [(AAAA, bytes(16)), (A, bytes(3))]), 7, question, A).addresses == ()


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=200), ancount=st.integers(0, 65535))
def test_any_reply_parses_or_is_refused_with_a_dns_error(tail: bytes, ancount: int) -> None:
    query_bytes = build_query(9, "api.test", A)
    question = query_bytes[12:query_bytes.index(b"\0", 12) + 5]
    data = struct.pack("!HHHHHH", 9, 0x8180, 1, ancount, 0, 0) + question + tail
    try:
        answer = parse_reply(data, 9, question, A)
    except PeerError:
        return
    assert all(address.count(".") == 3 for address in answer.addresses)


# -- the watch ------------------------------------------------------------------------------


async def test_a_watch_reports_each_new_answer_and_keeps_the_last_good_one() -> None:
    with DnsServer({"api.test": ["127.0.0.2"]}) as dns:
        spec = endpoint_spec(dns.authority("api.test", 7001), None)
        seen: list[tuple[HostPort, ...]] = []
        watch = EndpointWatch("beta", spec, seen.append, initial=resolve(spec))
        watch.start()
        try:
            dns.set("api.test", ["127.0.0.2", "127.0.0.3"])  # the TTL is 1 s: asked again within it
            await eventually_async(lambda: seen, "the scaled-up answer")
            assert seen[-1] == (HostPort("127.0.0.2", 7001), HostPort("127.0.0.3", 7001))
            dns.set("api.test", [])
            await eventually_async(lambda: seen[-1] == (), "the empty answer (scaled to zero)")
        finally:
            await watch.close()


async def test_a_failed_resolution_keeps_the_endpoints_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky(spec: EndpointSpec) -> Resolution:
        calls.append(1)
        raise PeerError("resolver: the DNS server is down")

    spec = endpoint_spec("dns:///api.test:7001", None)
    initial = Resolution((HostPort("10.0.0.1", 7001),), ttl=0.0)
    changed: list[object] = []
    caplog.set_level(logging.WARNING, logger="meshnode.peers")
    watch = EndpointWatch("beta", spec, changed.append, initial=initial, resolver=flaky)
    watch.start()
    try:
        await eventually_async(lambda: calls, "a resolution")  # due at once (TTL 0)
        watch.refresh()
        await eventually_async(lambda: len(calls) >= 2, "a second resolution")
        await asyncio.sleep(0)
    finally:
        await watch.close()
    assert watch.endpoints == initial.endpoints and changed == []
    lines = [r.getMessage() for r in caplog.records if "cannot resolve peer 'beta'" in r.getMessage()]
    assert lines == ["peers: cannot resolve peer 'beta' (dns:///api.test:7001), keeping its 1 endpoint(s): "
                     "resolver: the DNS server is down"]


async def test_refresh_asks_again_at_once_when_a_connection_failed() -> None:
    with DnsServer({"api.test": ["127.0.0.2"]}, ttl=30) as dns:
        spec = endpoint_spec(dns.authority("api.test", 7001), None)
        watch = EndpointWatch("beta", spec, lambda _e: None, initial=resolve(spec))
        asked = dns.asked("api.test")
        watch.start()
        try:
            watch.refresh()  # the TTL of 30 s is not waited for
            await eventually_async(lambda: dns.asked("api.test") > asked, "a new question after refresh()")
        finally:
            await watch.close()
