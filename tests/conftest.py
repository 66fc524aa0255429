"""Shared fixtures: async tests run on a fresh event loop each."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis times each example (200 ms by default) and fails a test whose example is slow once: on a
# loaded 2-vCPU machine that is noise, not a finding. Examples are bounded by max_examples instead.
settings.register_profile("meshnode", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("meshnode")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with asyncio.run (no plugin needed)."""
    func: Callable[..., Any] = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    params = inspect.signature(func).parameters
    kwargs = {name: pyfuncitem.funcargs[name] for name in params}
    asyncio.run(func(**kwargs))
    return True
