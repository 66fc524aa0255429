"""Durations as people write them: ``30s``, ``5m``, ``1h``, ``1h30m``, ``250ms`` or plain seconds.

Every duration meshnode reads (node.toml, agent.toml, command-line options)
goes through :func:`parse_duration`, so ``keepalive = "30s"``,
``keepalive = 30`` and ``--warn-expiry 24h`` mean what they say everywhere.
Units: ``ms``, ``s``, ``m``, ``h``, ``d``; several may follow each other,
largest first (``1h30m``). A bare number is seconds. Negative, infinite and
empty durations are refused.
"""

from __future__ import annotations

import argparse
import math
import re

__all__ = ["DURATION_HELP", "duration_argument", "format_duration", "parse_duration"]

#: What a duration looks like, for error messages and --help texts.
DURATION_HELP = "seconds, or a duration such as 30s, 5m, 1h, 1h30m, 250ms"

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = ("d", "h", "m", "s", "ms")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_MAX_TEXT = 64


def parse_duration(text: str) -> float:
    """``text`` in seconds; ValueError (saying what is wrong, without the value) when it is no duration."""
    value = text.strip()
    if not value:
        raise ValueError("is empty")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"is longer than {_MAX_TEXT} characters")
    if _NUMBER.fullmatch(value):
        return _finite(float(value))
    total, pos, last = 0.0, 0, -1
    for part in _PART.finditer(value):
        if part.start() != pos:
            break
        rank = _ORDER.index(part.group(2))
        if rank <= last:
            raise ValueError("repeats a unit or puts a smaller one first (write e.g. 1h30m)")
        last = rank
        total += float(part.group(1)) * _UNITS[part.group(2)]
        pos = part.end()
    if pos != len(value) or last < 0:
        raise ValueError("is not a duration")
    return _finite(total)


def _finite(seconds: float) -> float:
    if not math.isfinite(seconds):
        raise ValueError("is too large")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``1h30m``, ``90.5`` -> ``1m30.5s``, ``-60`` -> ``-1m``: the shortest exact spelling."""
    sign = "-" if seconds < 0 else ""
    left = abs(seconds)
    parts = []
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        whole = int(left // size)
        if whole:
            parts.append(f"{whole}{unit}")
            left -= whole * size
    if left or not parts:
        parts.append(f"{round(left, 3):g}s")
    return sign + "".join(parts)


def duration_argument(text: str) -> float:
    """:func:`parse_duration` as an argparse ``type`` (a usage error, exit 2, when it is no duration)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc} (write {DURATION_HELP})") from None
