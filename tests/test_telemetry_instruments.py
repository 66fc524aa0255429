"""Metrics and identity events through the OpenTelemetry API, read back with the SDK."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshnode.devagent.ca import DevCA
from meshnode.errors import IdentityUnavailableError
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.identity.x509svid import build_snapshot
from meshnode.telemetry import (
    IDENTITY_LOST,
    IDENTITY_ROTATED,
    POLICY_RELOAD_FAILED,
    Instruments,
    attributes,
    identity_event,
)
from meshnode.telemetry.instruments import split_method


@pytest.fixture(scope="module")
def snapshot() -> IdentitySnapshot:
    ca = DevCA("example.org")
    issued = ca.issue("spiffe://example.org/node/alpha", dt.timedelta(hours=1))
    return build_snapshot(issued.chain, issued.private_key, {"example.org": ca.bundle}, generation=3)


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    out: dict[str, list[tuple[dict[str, Any], float]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            assert sm.scope.name == "meshnode"
            for metric in sm.metrics:
                out[metric.name] = [
                    (dict(p.attributes or {}), p.value)
                    for p in metric.data.data_points
                    if isinstance(p, NumberDataPoint)
                ]
    return out


def test_counters_by_name_and_attributes() -> None:
    reader = InMemoryMetricReader()
    inst = Instruments(MeterProvider(metric_readers=[reader]))
    inst.rotation()
    inst.source_error("IdentityUnavailableError")
    inst.policy_reload_failure("PolicyError")
    points = _points(reader)
    assert points["meshnode.identity.rotations"] == [({}, 1)]
    assert points["meshnode.identity.source_errors"] == [({"error.type": "IdentityUnavailableError"}, 1)]
    assert points["meshnode.authz.policy_reload_failures"] == [({"error.type": "PolicyError"}, 1)]


def test_split_method() -> None:
    assert split_method("/demo.v1.Demo/Echo") == ("demo.v1.Demo", "Echo")
    assert split_method("weird") == ("", "weird")


def test_seconds_to_expiry_gauge_follows_watches(snapshot: IdentitySnapshot) -> None:
    reader = InMemoryMetricReader()
    inst = Instruments(MeterProvider(metric_readers=[reader]))
    current: list[IdentitySnapshot | None] = [None]
    with inst.watch_expiry(lambda: current[0]):
        assert attributes.IDENTITY_SECONDS_TO_EXPIRY not in _points(reader)  # no identity yet
        current[0] = snapshot
        [(attrs, value)] = _points(reader)[attributes.IDENTITY_SECONDS_TO_EXPIRY]
        assert attrs == {"meshnode.local.spiffe_id": "spiffe://example.org/node/alpha"}
        assert 3500 < value <= 3600

        def unavailable() -> IdentitySnapshot:
            raise IdentityUnavailableError("identity: not yet")

        second = inst.watch_expiry(unavailable)  # raising "unavailable" means no observation
        assert len(_points(reader)[attributes.IDENTITY_SECONDS_TO_EXPIRY]) == 1
        second.close()
        second.close()
    assert attributes.IDENTITY_SECONDS_TO_EXPIRY not in _points(reader)


def test_identity_event_adds_span_event_and_logs_without_key(
    snapshot: IdentitySnapshot, caplog: pytest.LogCaptureFixture
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    caplog.set_level(logging.INFO, logger="meshnode")
    with provider.get_tracer("t").start_as_current_span("rpc"):
        identity_event(IDENTITY_ROTATED, snapshot)
    [span] = spans.get_finished_spans()
    [event] = span.events
    assert event.name == "meshnode.identity.rotated"
    assert dict(event.attributes or {}) == {
        "meshnode.local.spiffe_id": "spiffe://example.org/node/alpha",
        "meshnode.svid.serial": snapshot.serial,
        "meshnode.svid.not_after": snapshot.not_after.isoformat(),
        "meshnode.identity.generation": 3,
        "meshnode.bundle.trust_domains": ("example.org",),
    }
    [record] = caplog.records
    assert (record.name, record.levelno) == ("meshnode.identity", logging.INFO)
    message = record.getMessage()
    assert message.startswith("identity.rotated local.spiffe_id=spiffe://example.org/node/alpha ")
    assert f"svid.serial={snapshot.serial}" in message
    assert f"svid.not_after={snapshot.not_after.isoformat()}" in message
    assert getattr(record, "meshnode.svid.serial") == snapshot.serial
    assert "PRIVATE KEY" not in caplog.text
    assert snapshot.key_pem.decode().splitlines()[1] not in caplog.text


def test_identity_event_without_span_still_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshnode")
    identity_event(IDENTITY_LOST, attributes={attributes.ERROR: "agent unreachable"})
    identity_event(POLICY_RELOAD_FAILED, attributes={attributes.POLICY_SOURCE: "/etc/policy.json"})
    lost, failed = caplog.records
    assert (lost.name, lost.levelname) == ("meshnode.identity", "WARNING")
    assert lost.getMessage() == "identity.lost error='agent unreachable'"
    assert (failed.name, failed.levelname) == ("meshnode.authz", "WARNING")
    assert failed.getMessage() == "authz.policy_reload_failed policy.source=/etc/policy.json"


def test_unknown_event_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown event 'meshnode\.identity\.exploded'"):
        identity_event("meshnode.identity.exploded")


def test_public_names_are_pinned() -> None:
    import meshnode.telemetry

    assert sorted(meshnode.telemetry.__all__) == [
        "ExpiryWatch",
        "IDENTITY_BUNDLE_UPDATED",
        "IDENTITY_LOST",
        "IDENTITY_RECOVERED",
        "IDENTITY_ROTATED",
        "Instruments",
        "POLICY_RELOADED",
        "POLICY_RELOAD_FAILED",
        "TelemetrySettings",
        "aio_client_interceptors",
        "aio_server_interceptor",
        "attributes",
        "identity_event",
        "instruments",
        "telemetry_settings_from_section",
    ]
    assert all(getattr(meshnode.telemetry, name) is not None for name in meshnode.telemetry.__all__)
