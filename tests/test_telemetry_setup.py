"""Turning telemetry on (configure_telemetry, [telemetry]) and proving it is off by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from meshnode.config._reader import Section
from meshnode.config.telemetry import TelemetrySettings, telemetry_settings_from_section
from meshnode.errors import ConfigError
from meshnode.telemetry.jsonl import read_spans
from meshnode.telemetry.setup import configure_telemetry


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)


def _python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


# -- off by default ------------------------------------------------------------


def test_library_use_installs_nothing() -> None:
    result = _python(
        """
        import json, sys, threading
        before = sorted(t.name for t in threading.enumerate())
        import meshnode, meshnode.telemetry
        from opentelemetry import metrics, trace
        from meshnode.telemetry import (IDENTITY_ROTATED, aio_client_interceptors, aio_server_interceptor,
                                        attributes, identity_event, instruments)
        inst = instruments()
        inst.rotation()
        inst.source_error("IdentityUnavailableError")
        inst.policy_reload_failure("PolicyError")
        inst.watch_expiry(lambda: None)
        aio_server_interceptor()
        aio_client_interceptors(attributes={attributes.PEER_SPIFFE_ID: "spiffe://example.org/b"})
        with trace.get_tracer("meshnode").start_as_current_span("call") as span:
            identity_event(IDENTITY_ROTATED)
        print(json.dumps({
            "threads_before": before,
            "threads_after": sorted(t.name for t in threading.enumerate()),
            "tracer_provider": type(trace.get_tracer_provider()).__name__,
            "meter_provider": type(metrics.get_meter_provider()).__name__,
            "recording": span.is_recording(),
            "sdk_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
        }))
        """
    )
    assert result["threads_after"] == result["threads_before"] == ["MainThread"]
    assert result["tracer_provider"] == "ProxyTracerProvider"
    assert result["meter_provider"] == "_ProxyMeterProvider"
    assert result["recording"] is False
    assert result["sdk_modules"] == []


# -- configure_telemetry, as `meshnode run` uses it -----------------------------


def test_jsonl_exporter_writes_spans_through_the_global_provider(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    result = _python(
        f"""
        import json
        from opentelemetry import trace
        from meshnode.config.telemetry import TelemetrySettings
        from meshnode.telemetry.setup import configure_telemetry
        handle = configure_telemetry(TelemetrySettings(exporter="jsonl", jsonl_path={str(path)!r}), "alpha")
        with trace.get_tracer("meshnode").start_as_current_span("outer"):
            with trace.get_tracer("meshnode").start_as_current_span("inner"):
                pass
        handle.shutdown()
        handle.shutdown()
        print(json.dumps({{"provider": type(trace.get_tracer_provider()).__module__,
                          "exporters": handle.exporters, "service": handle.service_name}}))
        """
    )
    assert result == {"provider": "opentelemetry.sdk.trace", "exporters": ["jsonl"], "service": "alpha"}
    spans = {s.name: s for s in read_spans([path]).spans}
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["outer"].service_name == "alpha"


def test_env_service_name_beats_the_node_name(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    result = _python(
        """
        import json
        from opentelemetry import trace
        from meshnode.config.telemetry import TelemetrySettings
        from meshnode.telemetry.setup import configure_telemetry
        with configure_telemetry(TelemetrySettings(), "alpha") as handle:
            trace.get_tracer("meshnode").start_span("op").end()
        print(json.dumps({"exporters": handle.exporters, "service": handle.service_name}))
        """,
        env={
            "OTEL_SERVICE_NAME": "checkout",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
            "OTEL_TRACES_EXPORTER": "jsonl",
            "OTEL_EXPORTER_JSONL_PATH": str(path),
        },
    )
    assert result == {"exporters": ["jsonl"], "service": "checkout"}
    [span] = read_spans([path]).spans
    assert span.resource["service.name"] == "checkout"
    assert span.resource["deployment.environment"] == "prod"


def test_an_installed_provider_is_kept(tmp_path: Path) -> None:
    result = _python(
        f"""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from meshnode.config.telemetry import TelemetrySettings
        from meshnode.telemetry.setup import configure_telemetry
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        handle = configure_telemetry(TelemetrySettings(exporter="jsonl", jsonl_path={str(tmp_path / "x")!r}), "a")
        kept = trace.get_tracer_provider() is mine
        print(json.dumps({{"kept": kept, "installed": handle.tracer_provider is not None}}))
        """
    )
    assert result == {"kept": True, "installed": False}
    assert not (tmp_path / "x").exists()


def test_exporter_none_starts_nothing() -> None:
    before = threading.active_count()
    with configure_telemetry(TelemetrySettings(exporter="none"), "alpha", set_global=False) as handle:
        assert handle.tracer_provider is None and handle.meter_provider is None
        assert handle.exporters == () and handle.metrics_exporter == "none"
        assert threading.active_count() == before


def test_nothing_configured_means_none() -> None:
    for settings in (TelemetrySettings(), None):
        handle = configure_telemetry(settings, "alpha", set_global=False)
        assert (handle.exporters, handle.tracer_provider, handle.meter_provider) == ((), None, None)
        assert handle.service_name == "alpha"


def test_settings_beat_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    settings = TelemetrySettings(exporter="jsonl", jsonl_path=str(tmp_path / "s.jsonl"), service_name="from-file")
    with configure_telemetry(settings, "alpha", set_global=False) as handle:
        assert handle.exporters == ("jsonl",)
        assert handle.service_name == "from-file"


def test_env_exporter_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, JSONL")
    monkeypatch.setenv("OTEL_EXPORTER_JSONL_PATH", str(tmp_path / "e.jsonl"))
    with configure_telemetry(TelemetrySettings(), "alpha", set_global=False) as handle:
        assert handle.exporters == ("console", "jsonl")
        assert handle.metrics_exporter == "none"
        assert handle.tracer_provider is not None


def test_a_named_path_or_endpoint_picks_the_exporter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with configure_telemetry(TelemetrySettings(jsonl_path=str(tmp_path / "p.jsonl")), "a", set_global=False) as h:
        assert h.exporters == ("jsonl",)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: F401
    except ImportError:
        # e.g. xds-protos overwrote opentelemetry/proto (grpc/grpc#42926): a clear error, not a traceback.
        with pytest.raises(ConfigError, match=r"^telemetry: the otlp exporter "):
            configure_telemetry(TelemetrySettings(), "a", set_global=False)
        return
    with configure_telemetry(TelemetrySettings(), "a", set_global=False) as h:
        assert h.exporters == ("otlp",)
        assert h.metrics_exporter == "none"


@pytest.mark.parametrize(
    ("env", "settings", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, {}, "OTEL_TRACES_EXPORTER names 'zipkin', which meshnode does not"),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, {}, "mixes 'none' with other exporters"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, {}, "OTEL_METRICS_EXPORTER='prometheus' is not supported"),
        ({}, {"exporter": "jsonl"}, "jsonl exporter needs a file: set [telemetry] jsonl_path or OTEL_EXPORTER_JSONL"),
    ],
)
def test_configuration_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], settings: dict[str, Any], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"^telemetry: ") as info:
        configure_telemetry(TelemetrySettings(**settings), "alpha", set_global=False)
    assert message in str(info.value)


def test_unwritable_span_file(tmp_path: Path) -> None:
    settings = TelemetrySettings(exporter="jsonl", jsonl_path=str(tmp_path / "no" / "such" / "dir.jsonl"))
    with pytest.raises(ConfigError, match=r"telemetry: cannot open span file .*: No such file or directory"):
        configure_telemetry(settings, "alpha", set_global=False)


def test_sdk_disabled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    settings = TelemetrySettings(exporter="jsonl", jsonl_path=str(tmp_path / "d.jsonl"))
    handle = configure_telemetry(settings, "alpha", set_global=False)
    assert handle.tracer_provider is None
    assert not (tmp_path / "d.jsonl").exists()


# -- [telemetry] --------------------------------------------------------------


def _section(data: dict[str, Any]) -> Section:
    return Section(data, "telemetry", "node.toml", "node")


def test_section_parses_all_keys() -> None:
    settings = telemetry_settings_from_section(
        _section(
            {
                "exporter": "otlp",
                "otlp_endpoint": "http://collector:4317",
                "service_name": "shop",
                "jsonl_path": "spans.jsonl",
                "metrics_exporter": "console",
            }
        )
    )
    assert settings == TelemetrySettings("otlp", "spans.jsonl", "http://collector:4317", "shop", "console")
    assert telemetry_settings_from_section(_section({})) == TelemetrySettings()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"exporter": "zipkin"}, "'telemetry.exporter' must be one of none, console, otlp, jsonl; got 'zipkin'"),
        ({"jsonl_file": "x"}, "'telemetry.jsonl_file' is not a known key"),
        ({"service_name": " "}, "'telemetry.service_name' must not be empty"),
        ({"otlp_endpoint": 4317}, "'telemetry.otlp_endpoint' must be a string"),
    ],
)
def test_section_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        telemetry_settings_from_section(_section(data))
    assert message in str(info.value)
    assert str(info.value).startswith("node: node.toml: ")


def test_settings_validate_when_built() -> None:
    with pytest.raises(ConfigError, match="telemetry: exporter must be one of"):
        TelemetrySettings(exporter="jaeger")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="telemetry: jsonl_path must not be empty"):
        TelemetrySettings(jsonl_path="")
