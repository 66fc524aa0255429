"""The Workload API source picks the agent up again soon after a long outage.

gRPC's reconnect backoff grows to 120 s; py-spiffe's channel used to sit in
it, so a node got its new SVID up to ~47 s after the agent returned. The
channel's backoff is now capped at 1 s (and py-spiffe's stream retry too).
This test stops the dev agent long enough for the default backoff to grow
well past that, brings it back with a new SVID, and waits for the rotation
event. The pickup delay is printed (run with -s), not asserted: the figures
for the issue come from a measurement, not from a timing threshold.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.workload_api import WorkloadApiSource
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import short_tmpdir

BETA = "spiffe://example.org/node/beta"
OUTAGE = 30.0  # seconds: gRPC's default backoff would be ~10-25 s by then


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    path = short_tmpdir("mn-wl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_a_new_svid_is_picked_up_soon_after_a_long_agent_outage(agent_dir: Path) -> None:
    config = AgentConfig(
        trust_domain="example.org", socket_dir=agent_dir / "sockets", state_dir=agent_dir / "state",
        entries=(EntryConfig("beta", parse_spiffe_id(BETA)),),
    )
    agent = DevAgentThread(config).start()
    source = WorkloadApiSource(agent.socket_address("beta"), timeout=5)
    arrived: dict[str, float] = {}
    rotated = threading.Event()

    def on_update(snapshot: IdentitySnapshot) -> None:
        arrived[snapshot.serial] = time.monotonic()
        rotated.set()

    source.subscribe(on_update)
    old = source.current().serial
    try:
        agent.close()
        time.sleep(OUTAGE)  # the outage itself: let the reconnect backoff grow
        assert source.current().serial == old  # the last good SVID stays meanwhile
        agent = DevAgentThread(config).start()  # same state_dir: same CA, a new SVID
        back = time.monotonic()
        new = format(agent.svid("beta").chain[0].serial_number, "x")
        deadline = back + 120
        while new not in arrived and time.monotonic() < deadline:
            rotated.wait(1.0)
            rotated.clear()
        assert new in arrived, "the source never picked the agent up again"
        assert source.current().serial == new
        print(f"\nWorkload API pickup {arrived[new] - back:.2f} s after the agent returned (outage {OUTAGE:.0f} s)")
    finally:
        source.close()
        agent.close()
