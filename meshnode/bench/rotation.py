"""Rotation under load: a dev agent rotates SVIDs (and the CA) while a client calls a server.

Both processes get their identities from a :class:`~meshnode.devagent.agent.DevAgentThread`
that runs in the runner. The client is a meshnode Node calling through its
peer channel; the server notes when a call first carries each client
certificate. For every rotation the runner records the moment the agent
pushed (right after ``rotate_svids()`` / ``rotate_ca()`` returns) and the new
client serial, so

* pickup = first call carrying the new client certificate - push. That call
  runs on the new channel, right after its handshake, so this bounds the
  push-to-new-handshake time from above;
* failed calls are every error the load saw;
* the latency spike compares the p99 of the load windows right after each
  push with the p99 of the windows far from any push.

All times are ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every
process on Linux.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from meshnode.bench.pki import CLIENT_ID, SERVER_ID, TRUST_DOMAIN
from meshnode.bench.protocol import Child
from meshnode.bench.stats import percentile, spread
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["agent_config", "run_rotations"]

_LEAD = 1.0  # steady load before the first rotation
_TAIL = 1.0  # and after the last one
_WINDOW = 0.05  # latency windows
_CA_ACTIVATE_AFTER = 0.2  # the next CA sits in the bundle this long before it signs


def agent_config(socket_dir: Path) -> AgentConfig:
    return AgentConfig(
        TRUST_DOMAIN,
        socket_dir,
        (EntryConfig("server", parse_spiffe_id(SERVER_ID)), EntryConfig("client", parse_spiffe_id(CLIENT_ID))),
    )


def _ca_points(rotations: int, ca_rotations: int) -> set[int]:
    return {(i + 1) * rotations // (ca_rotations + 1) for i in range(ca_rotations)}


def _rotate(agent: DevAgentThread, ca: bool) -> dict[str, Any]:
    """One rotation; ``pushed`` is when the agent's call returned (it has published by then)."""
    called = time.monotonic()
    if ca:
        agent.rotate_ca(activate_after=_CA_ACTIVATE_AFTER)
    else:
        agent.rotate_svids()
    pushed = time.monotonic()
    serial = format(agent.svid("client").chain[0].serial_number, "x")
    return {"kind": "ca" if ca else "svid", "pushed": pushed, "call_ms": (pushed - called) * 1e3,
            "client_serial": serial}


def _latency(windows: list[dict[str, Any]], pushes: list[float], after: float) -> dict[str, Any]:
    def near(start: float) -> bool:
        return any(p - _WINDOW <= start < p + after for p in pushes)

    steady = [w["p99_ms"] for w in windows if w["p99_ms"] is not None and not near(w["start"])]
    worst_after = []
    slowest_after = 0.0
    for p in pushes:
        hit = [w for w in windows if w["p99_ms"] is not None and p - _WINDOW <= w["start"] < p + after]
        if hit:
            worst_after.append(max(w["p99_ms"] for w in hit))
            slowest_after = max(slowest_after, max(w["max_ms"] for w in hit))
    return {
        "window_s": _WINDOW,
        "after_push_s": after,
        "steady_p99_ms": percentile(steady, 50) if steady else None,
        "after_push_p99_ms": spread(worst_after),
        "after_push_worst_p99_ms": max(worst_after) if worst_after else None,
        "slowest_call_after_push_ms": slowest_after or None,
    }


def run_rotations(
    agent: DevAgentThread,
    server: Child,
    client: Child,
    *,
    target: str,
    rotations: int,
    ca_rotations: int,
    interval: float,
    callers: int,
) -> dict[str, Any]:
    """Rotate ``rotations`` times under load; returns pickups, failures and the latency spike."""
    duration = _LEAD + rotations * interval + _TAIL
    client.send({"cmd": "load", "target": target, "unary": callers, "stream": 1, "duration": duration,
                 "window": _WINDOW})
    start = time.monotonic()
    ca_at = _ca_points(rotations, ca_rotations)
    done: list[dict[str, Any]] = []
    for i in range(rotations):
        time.sleep(max(start + _LEAD + i * interval - time.monotonic(), 0.0))
        done.append(_rotate(agent, i in ca_at))
    load = client.receive(duration + 60.0)
    seen: dict[str, float] = server.request({"cmd": "seen"})["seen"]
    for rotation in done:
        first = seen.get(rotation["client_serial"])
        rotation["pickup_ms"] = (first - rotation["pushed"]) * 1e3 if first is not None else None
    pickups = [r["pickup_ms"] for r in done if r["pickup_ms"] is not None]
    windows = load.pop("windows")
    return {
        "target": target,
        "rotations": len(done),
        "ca_rotations": sum(1 for r in done if r["kind"] == "ca"),
        "interval_s": interval,
        "callers": {"unary": callers, "stream": 1},
        "calls": load["calls"],
        "failed_calls": load["errors"],
        "error_samples": load["error_samples"],
        "pickup_ms": {**spread(pickups), "max": max(pickups) if pickups else None,
                      "missing": sum(1 for r in done if r["pickup_ms"] is None)},
        "latency": _latency(windows, [r["pushed"] for r in done], min(0.25, interval / 2)),
        "load": load,
        "each": done,
    }
