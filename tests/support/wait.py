"""Waiting for something a test caused, instead of sleeping and hoping.

The timeout is a safety net against a hang, not a performance claim: it is
generous (a loaded 2-vCPU machine must never trip it) and a test that
needs the wait to be short says so in a benchmark, not in an assert.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: how long a wait may take before the test fails as hung
PATIENCE = 30.0


def eventually(condition: Callable[[], object], what: str, timeout: float = PATIENCE, step: float = 0.02) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        time.sleep(step)


async def eventually_async(
    condition: Callable[[], object | Awaitable[object]], what: str, timeout: float = PATIENCE, step: float = 0.02
) -> None:
    """:func:`eventually` on the event loop; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        await asyncio.sleep(step)
