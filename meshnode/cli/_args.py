"""Argument types shared by the commands (stdlib only: imported when a parser is built)."""

from __future__ import annotations

import argparse

from meshnode.config.duration import DURATION_HELP, parse_duration

__all__ = ["duration"]


def duration(text: str) -> float:
    """An argparse ``type``: seconds, or ``30s``, ``5m``, ``1h``... (a usage error, exit 2, otherwise)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc} (write {DURATION_HELP})") from None
