"""Turning telemetry on: the OpenTelemetry SDK, for ``meshnode run`` and applications.

The library never imports this module. :func:`configure_telemetry` builds
the SDK providers, installs them as the global ones and returns a handle
whose ``shutdown()`` flushes them.

Which trace exporters (first rule that applies):

1. ``settings.exporter`` (``[telemetry] exporter``);
2. ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp``, ``console``,
   ``none`` and meshnode's own ``jsonl``;
3. ``jsonl`` when a file is named (``settings.jsonl_path`` or
   ``OTEL_EXPORTER_JSONL_PATH``), else ``otlp`` when an endpoint is named
   (``settings.otlp_endpoint``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
   ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), else ``none``. (Unlike the
   OpenTelemetry default, ``otlp``, a node with nothing configured does not
   dial a collector that is not there.)

``jsonl`` writes to ``settings.jsonl_path``, else ``OTEL_EXPORTER_JSONL_PATH``
(meshnode's variable; there is no standard one). ``otlp`` needs the extra
``pip install 'meshnode[otlp]'``; the exporter reads the standard
``OTEL_EXPORTER_OTLP_*`` variables itself (``settings.otlp_endpoint`` beats
``OTEL_EXPORTER_OTLP_ENDPOINT``). Metrics: ``settings.metrics_exporter``,
else ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``), else
``otlp`` when the traces go to otlp, else none.

The service name: ``settings.service_name``, else ``OTEL_SERVICE_NAME`` or
``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, else ``default_service_name``
(the node name). The SDK itself reads ``OTEL_TRACES_SAMPLER`` (default
``parentbased_always_on``), ``OTEL_BSP_*`` (batching; spans reach the file
within ``OTEL_BSP_SCHEDULE_DELAY``, 5 s by default) and
``OTEL_METRIC_EXPORT_INTERVAL``. ``OTEL_SDK_DISABLED=true`` turns everything off.
If a tracer provider is already installed (``opentelemetry-instrument
meshnode run``), meshnode uses it and installs nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.util.types import AttributeValue

from meshnode.config.telemetry import METRICS_EXPORTERS, TRACES_EXPORTERS, TelemetrySettings
from meshnode.errors import ConfigError
from meshnode.telemetry.jsonl import JsonlSpanExporter

__all__ = ["OTEL_EXPORTER_JSONL_PATH", "TelemetryHandle", "configure_telemetry"]

#: meshnode's variable naming the JSON-lines span file.
OTEL_EXPORTER_JSONL_PATH = "OTEL_EXPORTER_JSONL_PATH"

log = logging.getLogger("meshnode.telemetry")


class TelemetryHandle:
    """What :func:`configure_telemetry` installed; :meth:`shutdown` flushes and stops it (idempotent).

    ``tracer_provider`` / ``meter_provider`` are None when nothing was
    installed (then the globals are what they were).
    """

    def __init__(
        self,
        service_name: str,
        exporters: tuple[str, ...],
        metrics_exporter: str,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
    ) -> None:
        self.service_name = service_name
        self.exporters = exporters
        self.metrics_exporter = metrics_exporter
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._shut = False

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        ok = True
        if self.tracer_provider is not None:
            ok = self.tracer_provider.force_flush(timeout_millis) and ok
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(timeout_millis) and ok
        return ok

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    close = shutdown

    def __enter__(self) -> TelemetryHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def configure_telemetry(
    settings: TelemetrySettings | None,
    default_service_name: str,
    *,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    set_global: bool = True,
) -> TelemetryHandle:
    """Install the SDK providers that ``settings`` (None: all defaults) and the environment ask for.

    Raises ConfigError for an unknown exporter name, a jsonl exporter
    without a path, an unwritable span file or an unusable otlp exporter;
    nothing is left running then.
    """
    settings = settings or TelemetrySettings()
    env = os.environ
    service_name = str(
        settings.service_name or OTELResourceDetector().detect().attributes.get(SERVICE_NAME) or default_service_name
    )
    exporters = _traces_exporters(settings, env)
    metrics_name = _metrics_exporter(settings, env, exporters)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetryHandle(service_name, (), "none", None, None)
    if set_global and not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        log.info("telemetry: a tracer provider is already installed; meshnode uses it and adds no exporter")
        return TelemetryHandle(service_name, (), "none", None, None)

    span_exporters: list[SpanExporter] = []
    try:
        for name in exporters:
            span_exporters.append(_span_exporter(name, settings, env))
        metric_exporter = _metric_exporter(metrics_name, settings) if metrics_name != "none" else None
    except ConfigError:
        for made in span_exporters:
            made.shutdown()
        raise
    resource = Resource.create({**(resource_attributes or {}), SERVICE_NAME: service_name})
    tracer_provider = None
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = None
    if metric_exporter is not None:
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)]
        )
    if set_global and tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if set_global and meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
    log.debug(
        "telemetry: service %s, traces -> %s, metrics -> %s", service_name, ", ".join(exporters) or "none", metrics_name
    )
    return TelemetryHandle(service_name, exporters, metrics_name, tracer_provider, meter_provider)


def _traces_exporters(settings: TelemetrySettings, env: Mapping[str, str]) -> tuple[str, ...]:
    if settings.exporter is not None:
        names: list[str] = [settings.exporter]
    elif env.get("OTEL_TRACES_EXPORTER", "").strip():
        names = [n.strip().lower() for n in env["OTEL_TRACES_EXPORTER"].split(",") if n.strip()]
        for name in names:
            if name not in TRACES_EXPORTERS:
                raise ConfigError(
                    f"telemetry: OTEL_TRACES_EXPORTER names {name!r}, which meshnode does not support; "
                    f"use {', '.join(TRACES_EXPORTERS)}"
                )
        if "none" in names and len(names) > 1:
            raise ConfigError("telemetry: OTEL_TRACES_EXPORTER mixes 'none' with other exporters; pick one")
    elif settings.jsonl_path or env.get(OTEL_EXPORTER_JSONL_PATH):
        names = ["jsonl"]
    elif (
        settings.otlp_endpoint
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    else:
        names = []
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def _metrics_exporter(settings: TelemetrySettings, env: Mapping[str, str], traces: tuple[str, ...]) -> str:
    if settings.metrics_exporter is not None:
        return settings.metrics_exporter
    name = env.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if name:
        if name not in METRICS_EXPORTERS:
            raise ConfigError(
                f"telemetry: OTEL_METRICS_EXPORTER={name!r} is not supported; use {', '.join(METRICS_EXPORTERS)}"
            )
        return name
    return "otlp" if "otlp" in traces else "none"


def _span_exporter(name: str, settings: TelemetrySettings, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "jsonl":
        path = settings.jsonl_path or env.get(OTEL_EXPORTER_JSONL_PATH)
        if not path:
            raise ConfigError(
                f"telemetry: the jsonl exporter needs a file: set [telemetry] jsonl_path or {OTEL_EXPORTER_JSONL_PATH}"
            )
        try:
            return JsonlSpanExporter(path)
        except OSError as exc:
            raise ConfigError(f"telemetry: cannot open span file {path}: {exc.strerror}") from exc
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise _otlp_import_error(exc) from exc
    return OTLPSpanExporter(**_endpoint(settings))


def _metric_exporter(name: str, settings: TelemetrySettings) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter()
    try:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    except ImportError as exc:
        raise _otlp_import_error(exc) from exc
    return OTLPMetricExporter(**_endpoint(settings))


def _otlp_import_error(exc: ImportError) -> ConfigError:
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("opentelemetry.exporter"):
        return ConfigError(
            "telemetry: the otlp exporter needs opentelemetry-exporter-otlp-proto-grpc: pip install 'meshnode[otlp]'"
        )
    # xds-protos ships an old copy of opentelemetry/proto/*; installed after
    # opentelemetry-proto it replaces the files (grpc/grpc#42926).
    return ConfigError(
        f"telemetry: the otlp exporter is installed but cannot be imported ({exc}); if xds-protos was installed "
        "after opentelemetry-proto it overwrote opentelemetry/proto: run "
        "pip install --force-reinstall --no-deps opentelemetry-proto"
    )


def _endpoint(settings: TelemetrySettings) -> dict[str, Any]:
    return {"endpoint": settings.otlp_endpoint} if settings.otlp_endpoint else {}
