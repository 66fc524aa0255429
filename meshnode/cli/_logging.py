"""Logging set-up for the command line (the library never configures logging).

:func:`setup_logging` applies :func:`meshnode.config.logs.log_settings`:
``MESHNODE_LOG_LEVEL``, ``MESHNODE_LOG_FORMAT`` (or ``[node] log_format``)
and ``-v``. With the json format every line a command writes about itself
is one JSON object (:class:`meshnode.telemetry.jsonlog.JsonFormatter`): log
records, and the status lines printed with :func:`announce` (ready lines,
notes) and :func:`report_error` (the one-line error before exiting).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from meshnode.config.logs import LogFormat, LogSettings, env_log_format, log_settings
from meshnode.errors import ConfigError

__all__ = ["announce", "report_error", "setup_logging"]

_active: LogSettings | None = None


def setup_logging(verbose: bool = False, log_format: LogFormat | None = None) -> LogSettings:
    """Configure the root logger for a command; ConfigError for an invalid level or format."""
    global _active
    settings = log_settings(verbose=verbose, log_format=log_format)
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        from meshnode.telemetry.jsonlog import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, settings.level), handlers=[handler])
    # grpc and py-spiffe are chatty at INFO about their own retries
    logging.getLogger("spiffe").setLevel(logging.WARNING)
    # py-spiffe's X509Source logs every failed (re)connection attempt, every few seconds while a
    # Workload API keeps sending something unusable; meshnode's source reports each cause once itself
    logging.getLogger("spiffe.workloadapi.x509_source").setLevel(logging.CRITICAL)
    _active = settings
    return settings


def _json() -> bool:
    if _active is not None:
        return _active.format == "json"
    try:
        return env_log_format() == "json"
    except ConfigError:
        return False


def announce(text: str, *, stream: TextIO | None = None, level: int = logging.INFO, logger: str = "meshnode") -> None:
    """Print a status line (``text`` as is, or one JSON object with the json format) and flush."""
    out = stream or sys.stdout
    if _json():
        from meshnode.telemetry.jsonlog import JsonFormatter

        record = logging.LogRecord(logger, level, "", 0, "%s", (text,), None)
        text = JsonFormatter().format(record)
    print(text, file=out, flush=True)


def report_error(text: str) -> None:
    """The one line a command prints on stderr when it stops with an error."""
    announce(text, stream=sys.stderr, level=logging.ERROR)
