"""How the command line logs: format (``text`` or ``json``) and level, from the environment and node.toml.

``MESHNODE_LOG_FORMAT`` (``text`` | ``json``) beats ``[node] log_format``;
``MESHNODE_LOG_LEVEL`` (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``,
``CRITICAL``, any case) beats ``-v`` (DEBUG) and the default INFO. A value
that is none of these is a configuration error, never silently ignored.
The library reads these settings but never applies them: only the
``meshnode`` commands configure logging (:mod:`meshnode.cli._logging`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from meshnode.config._reader import show
from meshnode.errors import ConfigError

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "LOG_LEVELS",
    "LOG_LEVEL_ENV",
    "LogFormat",
    "LogSettings",
    "env_log_format",
    "log_settings",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT_ENV = "MESHNODE_LOG_FORMAT"
LOG_LEVEL_ENV = "MESHNODE_LOG_LEVEL"


@dataclass(frozen=True)
class LogSettings:
    """The format and level ``meshnode`` commands log with."""

    format: LogFormat = "text"
    level: str = "INFO"

    def __post_init__(self) -> None:
        if self.format not in LOG_FORMATS:
            raise ConfigError(reason=f"log format must be one of {', '.join(LOG_FORMATS)}, not {show(self.format)}",
                              component="config", key="node.log_format")
        if self.level not in LOG_LEVELS:
            raise ConfigError(reason=f"log level must be one of {', '.join(LOG_LEVELS)}, not {show(self.level)}",
                              component="config", key="MESHNODE_LOG_LEVEL")


def env_log_format(environ: Mapping[str, str] | None = None) -> LogFormat | None:
    """``MESHNODE_LOG_FORMAT`` (None when unset or empty); ConfigError when it names no format."""
    env = os.environ if environ is None else environ
    value = env.get(LOG_FORMAT_ENV, "").strip().lower()
    if not value:
        return None
    if value not in LOG_FORMATS:
        raise ConfigError(
            reason=f"{LOG_FORMAT_ENV}={show(env[LOG_FORMAT_ENV])} is not a log format; use {' or '.join(LOG_FORMATS)}",
            component="config", key=LOG_FORMAT_ENV, value=env[LOG_FORMAT_ENV],
        )
    return value  # type: ignore[return-value]  # checked against LOG_FORMATS


def log_settings(
    *, verbose: bool = False, log_format: LogFormat | None = None, environ: Mapping[str, str] | None = None
) -> LogSettings:
    """The settings for a command: ``log_format`` from node.toml (None: the environment, else text)."""
    env = os.environ if environ is None else environ
    fmt = env_log_format(env) or log_format or "text"
    raw = env.get(LOG_LEVEL_ENV, "").strip()
    level = raw.upper() if raw else ("DEBUG" if verbose else "INFO")
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(
            reason=f"{LOG_LEVEL_ENV}={show(raw)} is not a log level; use one of {', '.join(LOG_LEVELS)}",
            component="config", key=LOG_LEVEL_ENV, value=raw,
        )
    return LogSettings(fmt, level)
