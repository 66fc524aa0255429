"""Telemetry: OpenTelemetry API only, off until an application turns it on.

The library records through the OpenTelemetry API (tracer and meter name
``meshnode``): spans from opentelemetry-instrumentation-grpc with meshnode's
identity attributes (:mod:`~meshnode.telemetry.attributes` documents every
name), identity and policy events (:func:`identity_event`) and metrics
(:func:`instruments`). With no SDK installed all of it is a no-op: no
exporter, no thread.

The SDK side lives in modules the library never imports:
:mod:`meshnode.telemetry.setup` (``configure_telemetry``, used by
``meshnode run``), :mod:`meshnode.telemetry.jsonl` (the span file, OTLP/JSON
lines: :mod:`~meshnode.telemetry.otlpjson`) and
:mod:`meshnode.telemetry.waterfall` (``meshnode trace show``).

RPC metrics per method, status and peer (:mod:`~meshnode.telemetry.rpcmetrics`)
are recorded on meshnode's own call paths when a node has ``[telemetry]
prometheus``; :mod:`~meshnode.telemetry.prometheus` serves them (prometheus-client,
imported only then), :mod:`~meshnode.telemetry.topview` reads them back for
``meshnode top``. :mod:`~meshnode.telemetry.jsonlog` formats log records as
JSON lines with the current trace (``MESHNODE_LOG_FORMAT=json``).
"""

from meshnode.config.telemetry import TelemetrySettings, telemetry_settings_from_section
from meshnode.telemetry import attributes
from meshnode.telemetry.events import (
    IDENTITY_BUNDLE_UPDATED,
    IDENTITY_LOST,
    IDENTITY_RECOVERED,
    IDENTITY_ROTATED,
    POLICY_RELOAD_FAILED,
    POLICY_RELOADED,
    identity_event,
)
from meshnode.telemetry.instrumentation import aio_client_interceptors, aio_server_interceptor
from meshnode.telemetry.instruments import ExpiryWatch, Instruments, instruments

__all__ = [
    "IDENTITY_BUNDLE_UPDATED",
    "IDENTITY_LOST",
    "IDENTITY_RECOVERED",
    "IDENTITY_ROTATED",
    "POLICY_RELOADED",
    "POLICY_RELOAD_FAILED",
    "ExpiryWatch",
    "Instruments",
    "TelemetrySettings",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "attributes",
    "identity_event",
    "instruments",
    "telemetry_settings_from_section",
]
