"""The load generator: N concurrent callers on one stub for a fixed time.

Unary callers call ``Say`` back to back; stream callers read whole
``SayStream`` streams back to back. Latency is per call (per whole stream
for streams). Percentiles are of the unary calls when there are unary
callers, else of the streams. With ``window`` > 0 the calls are also
grouped by start time into windows (``time.monotonic()``, comparable
across processes on Linux), which the rotation scenario lines up with its
rotations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc

from meshnode.bench.service import LONG_REQUEST, LONG_STREAM_MESSAGES, REQUEST, STREAM_MESSAGES
from meshnode.bench.stats import percentile

__all__ = ["run_load"]

_TIMEOUT = 10.0
_SAMPLES = 5


class _Tally:
    def __init__(self, keep_starts: bool) -> None:
        self.latencies: list[float] = []
        self.starts: list[float] | None = [] if keep_starts else None
        self.calls = 0
        self.messages = 0
        self.errors: list[tuple[float, str]] = []

    def ok(self, start: float, end: float) -> None:
        self.calls += 1
        self.latencies.append(end - start)
        if self.starts is not None:
            self.starts.append(start)

    def failed(self, start: float, exc: BaseException) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            text = f"{exc.code().name}: {exc.details()}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        self.errors.append((start, text))


async def _unary(stub: Any, deadline: float, tally: _Tally) -> None:
    say = stub.Say
    clock = time.monotonic
    while (start := clock()) < deadline:
        try:
            await say(REQUEST, timeout=_TIMEOUT)
        except Exception as exc:  # every failure counts, whatever raised it
            tally.failed(start, exc)
        else:
            tally.ok(start, clock())


async def _stream(stub: Any, deadline: float, tally: _Tally, long: bool) -> None:
    say_stream = stub.SayStream
    clock = time.monotonic
    request, expected = (LONG_REQUEST, LONG_STREAM_MESSAGES) if long else (REQUEST, STREAM_MESSAGES)
    while (start := clock()) < deadline:
        got = 0
        try:
            async for _reply in say_stream(request, timeout=_TIMEOUT):
                got += 1
        except Exception as exc:
            tally.failed(start, exc)
            continue
        if got != expected:
            tally.failed(start, RuntimeError(f"stream ended after {got} of {expected} messages"))
            continue
        tally.messages += got
        tally.ok(start, clock())


def _windows(tally: _Tally, errors: Sequence[tuple[float, str]], begin: float, window: float) -> list[dict[str, Any]]:
    assert tally.starts is not None
    buckets: dict[int, list[float]] = {}
    for start, latency in zip(tally.starts, tally.latencies, strict=True):
        buckets.setdefault(int((start - begin) / window), []).append(latency)
    failed: dict[int, int] = {}
    for start, _text in errors:
        index = int((start - begin) / window)
        failed[index] = failed.get(index, 0) + 1
    out = []
    for index in sorted(set(buckets) | set(failed)):
        values = sorted(buckets.get(index, []))
        out.append({
            "start": begin + index * window,
            "calls": len(values),
            "errors": failed.get(index, 0),
            "p50_ms": percentile(values, 50, presorted=True) * 1e3 if values else None,
            "p99_ms": percentile(values, 99, presorted=True) * 1e3 if values else None,
            "max_ms": values[-1] * 1e3 if values else None,
        })
    return out


async def run_load(
    stub: Any, *, unary: int, stream: int, duration: float, window: float = 0.0, long: bool = False
) -> dict[str, Any]:
    """Run the load; returns calls, errors (with a few samples), latency percentiles and CPU time.

    ``long``: the stream callers ask for long streams (:data:`~meshnode.bench.service.LONG_STREAM_MESSAGES`).
    """
    unary_tally, stream_tally = _Tally(window > 0), _Tally(window > 0)
    cpu_before = time.process_time()
    begin = time.monotonic()
    deadline = begin + duration
    await asyncio.gather(
        *(_unary(stub, deadline, unary_tally) for _ in range(unary)),
        *(_stream(stub, deadline, stream_tally, long) for _ in range(stream)),
    )
    elapsed = time.monotonic() - begin
    cpu = time.process_time() - cpu_before
    main = unary_tally if unary else stream_tally
    latencies = sorted(main.latencies)
    errors = sorted(unary_tally.errors + stream_tally.errors)
    result: dict[str, Any] = {
        "begin": begin,
        "elapsed": elapsed,
        "calls": unary_tally.calls + stream_tally.calls,
        "unary_calls": unary_tally.calls,
        "streams": stream_tally.calls,
        "messages": stream_tally.messages,
        "errors": len(errors),
        "error_samples": sorted({text for _t, text in errors})[:_SAMPLES],
        "client_cpu": cpu,
        "p50_ms": percentile(latencies, 50, presorted=True) * 1e3 if latencies else None,
        "p99_ms": percentile(latencies, 99, presorted=True) * 1e3 if latencies else None,
        "max_ms": latencies[-1] * 1e3 if latencies else None,
    }
    if window > 0:
        result["window"] = window
        result["windows"] = _windows(main, [e for e in errors], begin, window)
    return result
