"""A peer is a service: replicas behind one name, balanced per call, retried, failed over; both verify modes.

Every process is real (see tests/support/replicas.py): a dev agent hands
out the identities, replicas are `meshnode run` processes on 127.0.0.2,
127.0.0.3, ... sharing one SPIFFE ID, an impostor holds a valid SVID of
another ID, a DNS server on 127.0.0.1 answers for the service's name and
the test changes its answer, and the client node calls the peer from its
own process. Calls are counted per replica from the replicas' own answers
(Relay.Forward returns the node name that served it).

Waits are on what the client reports (a window of calls with the wanted
counts); the timeouts are generous safety nets, not performance claims.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.replicas import BETA, IMPOSTOR_HOST, MALLORY, Client, Mesh, Replica, mesh

pytestmark = pytest.mark.slow

MODES = ["spiffe-id", "dns"]
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
#: how long a returning replica may take to get calls again (the issue's bound)
RETURN_WITHIN = 15.0


def three(m: Mesh) -> list[Replica]:
    replicas = [m.replica(i) for i in (2, 3, 4)]
    m.answer(*HOSTS)
    return replicas


def until(client: Client, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0,
          pause: float = 0.2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Mark windows of the running load until one satisfies ``done``; (that window, all windows)."""
    deadline = time.monotonic() + timeout
    windows: list[dict[str, Any]] = []
    while True:
        time.sleep(pause)
        window = client.ask("mark")
        windows.append(window)
        if done(window):
            return window, windows
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}; last windows: {windows[-5:]}")


def until_calls(client: Client, calls: int, what: str, *, without: str | None = None,
                spread: frozenset[str] = frozenset(), timeout: float = 60.0) -> list[dict[str, Any]]:
    """Mark windows of the running load until consecutive ones hold ``calls`` calls, none of them on
    ``without`` and every replica in ``spread`` among them; all the windows marked.

    Counted over as many windows as it takes, so a slower machine (fewer calls a window) waits longer
    instead of never seeing a window big enough."""
    deadline = time.monotonic() + timeout
    windows: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    while True:
        time.sleep(0.2)
        window = client.ask("mark")
        windows.append(window)
        run = [] if without is not None and without in window["counts"] else [*run, window]
        seen = {name for w in run for name in w["counts"]}
        if sum(w["calls"] for w in run) >= calls and spread <= seen:
            return windows
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}; last windows: {windows[-5:]}")


def failures(windows: list[dict[str, Any]]) -> list[Any]:
    return [f for w in windows for f in w["failed"]]


@pytest.mark.parametrize("verify", MODES)
def test_calls_spread_over_every_replica_and_never_reach_an_impostor(verify: str) -> None:
    """3 replicas and an impostor in the DNS answer, 600 calls: each replica 25-42 % of them, the
    impostor none, no call fails; the client logs the impostor once, naming its endpoint and the
    identity it presented, and counts it in meshnode.peer.endpoint_rejected."""
    with mesh() as m:
        three(m)
        m.start_impostor()
        m.answer(*HOSTS, IMPOSTOR_HOST)
        client = m.client(verify)
        result = client.ask("calls 600")
        assert result["failed"] == []
        counts = result["counts"]
        assert set(counts) == {"beta-2", "beta-3", "beta-4"}, counts  # mallory never answered
        for n in counts.values():
            assert 0.25 * 600 <= n <= 0.42 * 600, counts
        assert sum(counts.values()) == 600
        impostor = f"{IMPOSTOR_HOST}:{m.port}"
        deadline = time.monotonic() + 30
        while client.ask("metric")["endpoint_rejected"] < 1:
            assert time.monotonic() < deadline, f"no rejection counted\n{client.log()}"
            time.sleep(0.2)
        more = client.ask("calls 60")  # more calls, more refused handshakes: still one line, one count
        assert more["failed"] == [] and "mallory" not in more["counts"]
        assert client.ask("metric")["endpoint_rejected"] == 1
        lines = [line for line in client.log().splitlines() if f"endpoint {impostor} of peer 'beta'" in line]
        assert len(lines) == 1, client.log()
        assert f"presented {MALLORY}, not {BETA}" in lines[0]


@pytest.mark.parametrize("verify", MODES)
def test_an_impostor_in_a_static_list_gets_no_call(verify: str) -> None:
    """``addresses`` with two replicas and the impostor: the same, without DNS."""
    with mesh() as m:
        m.replica(2)
        m.replica(3)
        m.start_impostor()
        listed = ", ".join(f'"{h}:{m.port}"' for h in ("127.0.0.2", "127.0.0.3", IMPOSTOR_HOST))
        client = m.client(verify, endpoints=f"addresses = [{listed}]")
        result = client.ask("calls 200")
        assert result["failed"] == [] and set(result["counts"]) == {"beta-2", "beta-3"}, result
        deadline = time.monotonic() + 30
        while client.ask("metric")["endpoint_rejected"] < 1:
            assert time.monotonic() < deadline, f"no rejection counted\n{client.log()}"
            time.sleep(0.2)
        assert f"presented {MALLORY}" in client.log()


def stalls_everywhere(m: Mesh, client: Client, count: int = 6) -> dict[str, int]:
    """Start ``count`` calls that the replicas hold without answering; wait until each is held."""
    client.ask(f"stall {count}")
    deadline = time.monotonic() + 60
    while True:
        held = {name: r.stalled() for name, r in m.replicas.items()}
        if sum(held.values()) == count:
            return held
        assert time.monotonic() < deadline, f"stall calls not all held: {held}"
        time.sleep(0.1)


@pytest.mark.parametrize("verify", MODES)
def test_a_killed_replica_fails_no_call_gets_none_while_down_and_calls_again_when_back(verify: str) -> None:
    """Under load, with calls held by every replica: SIGKILL the one holding the most. No call of the
    caller fails: the held ones are retried on the other replicas (they hold them now); the dead
    one gets no call while down; restarted on its address it gets calls again within 15 s."""
    with mesh() as m:
        three(m)
        client = m.client(verify)
        client.ask("load 8")
        until(client, lambda w: len(w["counts"]) == 3, "calls on every replica")
        held = stalls_everywhere(m, client)
        victim = m.replicas[max(held, key=lambda n: held[n])]
        others = [r for r in m.replicas.values() if r is not victim]
        victim.kill()
        # the calls it held are retried on the others, which now hold all of them
        deadline = time.monotonic() + 60
        while sum(r.stalled() for r in others) < sum(held.values()):
            assert time.monotonic() < deadline, f"held calls not retried elsewhere: {client.ask('stalled')}"
            time.sleep(0.1)
        client.ask("mark")  # calls in flight at the kill are in this window
        down = until_calls(client, 500, "calls while the replica is down")
        assert all(victim.name not in w["counts"] for w in down), down
        back = m.replicas[victim.name] = Replica(m, victim.host, m.port, name=victim.name, socket="beta")
        start = time.monotonic()
        _, after = until(client, lambda w: back.name in w["counts"], "the returning replica to get calls",
                         timeout=RETURN_WITHIN + 30)
        assert time.monotonic() - start <= RETURN_WITHIN, after
        totals = client.ask("stop")
        stalled = client.ask("stalled")
        assert failures(down) == [] and failures(after) == [] and totals["failed"] == []
        assert stalled["ended"] == [] and stalled["running"] == sum(held.values()), stalled


@pytest.mark.parametrize("verify", MODES)
def test_without_retries_the_calls_a_killed_replica_held_fail(verify: str) -> None:
    """The same kill with ``retries = 0``: the calls the dead replica held fail with UNAVAILABLE
    (so it is the retry policy that saves them above)."""
    with mesh() as m:
        three(m)
        client = m.client(verify, extra="retries = 0")
        client.ask("calls 30")
        held = stalls_everywhere(m, client)
        victim = m.replicas[max(held, key=lambda n: held[n])]
        victim.kill()
        deadline = time.monotonic() + 60
        while len(client.ask("stalled")["ended"]) < held[victim.name]:
            assert time.monotonic() < deadline, "the held calls did not end"
            time.sleep(0.1)
        stalled = client.ask("stalled")
        assert [code for code, _ in stalled["ended"]] == ["UNAVAILABLE"] * held[victim.name], stalled
        assert stalled["running"] == sum(held.values()) - held[victim.name]


@pytest.mark.parametrize("verify", MODES)
def test_a_replica_stopped_gracefully_fails_no_call_even_without_retries(verify: str) -> None:
    """SIGTERM (GOAWAY, in-flight calls finish) under load, ``retries = 0``: no call fails."""
    with mesh() as m:
        three(m)
        client = m.client(verify, extra="retries = 0")
        client.ask("load 8")
        until(client, lambda w: len(w["counts"]) == 3, "calls on every replica")
        if verify == "spiffe-id":  # the node's own health watches (dns mode: gRPC's, up before any call)
            client.wait_health_watched([r.address for r in m.replicas.values()])
        stopped = m.replicas["beta-3"]
        assert stopped.process.terminate() == 0
        windows = until_calls(client, 500, "calls without the stopped replica", without="beta-3")
        totals = client.ask("stop")
        assert failures(windows) == [] and totals["failed"] == [], failures(windows)[:5]


@pytest.mark.parametrize("verify", MODES)
def test_scaling_through_dns_adds_and_drains_replicas(verify: str) -> None:
    """DNS lists 2 of 3 running replicas; adding the third to the answer gives it calls, removing
    one (still running) drains it; no call fails throughout."""
    with mesh() as m:
        three(m)
        m.answer("127.0.0.2", "127.0.0.3")
        client = m.client(verify)
        client.ask("load 8")
        _, w1 = until(client, lambda w: {"beta-2", "beta-3"} <= set(w["counts"]), "calls on the listed two")
        assert all("beta-4" not in w["counts"] for w in w1)
        m.answer(*HOSTS)  # scale up
        _, w2 = until(client, lambda w: "beta-4" in w["counts"], "calls on the added replica")
        m.answer("127.0.0.3", "127.0.0.4")  # scale down: beta-2 keeps running, out of the answer
        w3 = until_calls(client, 300, "the removed replica drained", without="beta-2",
                         spread=frozenset({"beta-3", "beta-4"}))
        totals = client.ask("stop")
        assert failures(w1 + w2 + w3) == [] and totals["failed"] == []
        assert "now has 3 endpoint(s)" in client.log() and "removed 127.0.0.2" in client.log()


@pytest.mark.parametrize("verify", MODES)
def test_every_svid_rotates_under_load_without_a_failed_call(verify: str) -> None:
    """SVIDs of 4 s (re-issued every 2 s) for the three replicas and the client, under load: after
    four client rotations every replica still gets calls and none failed."""
    with mesh(svid_ttl=4) as m:
        three(m)
        client = m.client(verify)
        client.ask("load 6")
        first = client.ask("identity")
        deadline = time.monotonic() + 90
        windows = []
        while client.ask("identity")["serials"] < first["serials"] + 4:
            assert time.monotonic() < deadline, "the client's SVID did not rotate"
            time.sleep(0.5)
            windows.append(client.ask("mark"))
        _, more = until(client, lambda w: len(w["counts"]) == 3, "calls on every replica after rotations")
        totals = client.ask("stop")
        assert failures(windows + more) == [] and totals["failed"] == [], failures(windows + more)[:5]
