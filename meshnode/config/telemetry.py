"""``[telemetry]`` settings: which exporter ``meshnode run`` installs.

Every field is optional; None means "follow the OpenTelemetry environment"
(see :mod:`meshnode.telemetry.setup` for the exact rules). A value set here
beats the environment, and the environment beats meshnode's defaults::

    [telemetry]
    exporter = "jsonl"                  # none | console | otlp | jsonl
    jsonl_path = "traces/alpha.jsonl"   # the node config resolves it against its own directory
    otlp_endpoint = "http://collector:4317"
    service_name = "alpha"              # default: OTEL_SERVICE_NAME, then the node name
    metrics_exporter = "otlp"           # none | console | otlp
    prometheus = "127.0.0.1:9464"       # serve GET /metrics (Prometheus text format) on host:port
    max_peer_ids = 200                  # distinct peer SPIFFE IDs in RPC metrics; the rest count as "other"

``prometheus`` and ``max_peer_ids`` are the node's (a :class:`~meshnode.node.Node`
serves the endpoint); the node config checks that ``prometheus`` is host:port.
This module only reads values; it never imports the OpenTelemetry SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from meshnode.config._reader import Section
from meshnode.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_PEER_IDS",
    "MAX_PEER_IDS_RANGE",
    "METRICS_EXPORTERS",
    "TRACES_EXPORTERS",
    "MetricsExporterName",
    "TelemetrySettings",
    "TracesExporterName",
    "telemetry_settings_from_section",
]

TracesExporterName = Literal["none", "console", "otlp", "jsonl"]
MetricsExporterName = Literal["none", "console", "otlp"]
TRACES_EXPORTERS: tuple[str, ...] = get_args(TracesExporterName)
METRICS_EXPORTERS: tuple[str, ...] = get_args(MetricsExporterName)
#: distinct peer SPIFFE IDs the RPC metrics keep apart (the rest are recorded as "other")
DEFAULT_MAX_PEER_IDS = 200
MAX_PEER_IDS_RANGE = (1, 100_000)


@dataclass(frozen=True)
class TelemetrySettings:
    """What the application asks for; None fields follow the environment."""

    exporter: TracesExporterName | None = None
    jsonl_path: str | None = None
    otlp_endpoint: str | None = None
    service_name: str | None = None
    metrics_exporter: MetricsExporterName | None = None
    prometheus: str | None = None
    max_peer_ids: int = DEFAULT_MAX_PEER_IDS

    def __post_init__(self) -> None:
        if self.exporter is not None and self.exporter not in TRACES_EXPORTERS:
            raise ConfigError(
                f"telemetry: exporter must be one of {', '.join(TRACES_EXPORTERS)}; got {self.exporter!r}"
            )
        if self.metrics_exporter is not None and self.metrics_exporter not in METRICS_EXPORTERS:
            raise ConfigError(
                f"telemetry: metrics_exporter must be one of {', '.join(METRICS_EXPORTERS)}; "
                f"got {self.metrics_exporter!r}"
            )
        low, high = MAX_PEER_IDS_RANGE
        if isinstance(self.max_peer_ids, bool) or not isinstance(self.max_peer_ids, int) or not (
            low <= self.max_peer_ids <= high
        ):
            raise ConfigError(f"telemetry: max_peer_ids must be a whole number {low}-{high}, not {self.max_peer_ids!r}")
        for name in ("jsonl_path", "otlp_endpoint", "service_name", "prometheus"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"telemetry: {name} must not be empty (leave it out to use the default)")


def telemetry_settings_from_section(section: Section) -> TelemetrySettings:
    """Read a ``[telemetry]`` table (unknown keys are refused)."""
    settings = TelemetrySettings(
        exporter=section.choice("exporter", TRACES_EXPORTERS, None),
        jsonl_path=_text(section, "jsonl_path"),
        otlp_endpoint=_text(section, "otlp_endpoint"),
        service_name=_text(section, "service_name"),
        metrics_exporter=section.choice("metrics_exporter", METRICS_EXPORTERS, None),
        prometheus=_text(section, "prometheus"),
        max_peer_ids=section.integer(
            "max_peer_ids", DEFAULT_MAX_PEER_IDS, minimum=MAX_PEER_IDS_RANGE[0], maximum=MAX_PEER_IDS_RANGE[1]
        ),
    )
    section.done()
    return settings


def _text(section: Section, key: str) -> str | None:
    value: str | None = section.string(key, None)
    if value is not None and not value.strip():
        raise section.error(key, "must not be empty (leave it out to use the default)")
    return value
