"""The "has not been renewed" warning: only for an SVID that really was not renewed.

Issuers backdate not-before (the dev CA by 30 s); with a short svid_ttl, 75%
of the backdated lifetime came before the issuer's renewal at half-life, so
the warning fired on every rotation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Iterator

import pytest

from meshnode.devagent.ca import DevCA
from meshnode.identity_state import renewal_overdue_at
from meshnode.node import Node
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.nodes import node_config

NOT_RENEWED = "has not been renewed"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.warned = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if NOT_RENEWED in record.getMessage():
            self.warned.set()


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("meshnode.identity")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.slow
async def test_short_lived_svids_renewed_on_time_raise_no_warning(records: Records) -> None:
    """svid_ttl 8 s: the dev source renews at 4 s; two rotations, no warning."""
    config = node_config("alpha", identity={"source": "dev", "trust_domain": "example.org", "svid_ttl": 8})
    async with Node(config) as node:
        rotated = asyncio.Event()
        loop = asyncio.get_running_loop()
        unsubscribe = node.source.subscribe(
            lambda snap: snap.generation >= 3 and loop.call_soon_threadsafe(rotated.set)
        )
        try:
            await asyncio.wait_for(rotated.wait(), timeout=60)
        finally:
            unsubscribe()
    assert not [m for m in records.messages if NOT_RENEWED in m], records.messages


async def test_an_svid_that_is_not_renewed_is_still_warned_about(records: Records) -> None:
    source = ManualSource(DevCA("example.org"), "spiffe://example.org/node/alpha", ttl=dt.timedelta(seconds=3))
    async with Node(node_config("alpha"), source=source):
        assert await asyncio.to_thread(records.warned.wait, 30)
    (warning,) = [m for m in records.messages if NOT_RENEWED in m]
    assert f"serial={source.current().serial}" in warning


@pytest.mark.parametrize("ttl", [2, 10, 30, 3600])
def test_a_fresh_svid_is_overdue_only_after_the_issuers_half_life_renewal(ttl: int) -> None:
    snap = issue_snapshot(DevCA("example.org"), "spiffe://example.org/a", ttl=dt.timedelta(seconds=ttl))
    received = dt.datetime.now(dt.UTC).timestamp()  # however long after the issue (a loaded machine stalls)
    issued = snap.not_after.timestamp() - ttl  # the dev CA gives exactly ttl from when it issues
    renewal = issued + ttl / 2  # the dev agent and dev source renew at half the lifetime they gave
    overdue = renewal_overdue_at(snap, received)
    assert renewal < overdue < snap.not_after.timestamp()


def test_an_svid_that_arrives_old_is_overdue_at_once() -> None:
    """A node started 50 minutes into a 1 h SVID's life: its issuer should have renewed it 20 minutes ago."""
    snap = issue_snapshot(DevCA("example.org"), "spiffe://example.org/a", ttl=dt.timedelta(hours=1))
    received = snap.not_before.timestamp() + 50 * 60
    assert renewal_overdue_at(snap, received) <= received
