"""Reading a node's /metrics as Prometheus does: over HTTP, parsed by prometheus_client's parser."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

SERVER = "rpc_server_call_duration_seconds"
CLIENT = "rpc_client_call_duration_seconds"
ECHO = "meshnode.demo.v1.Echo"


@dataclass(frozen=True)
class Sample:
    family: str  # the family name (no _total, _count... suffix)
    name: str  # the sample name
    labels: Mapping[str, str]
    value: float


def scrape(url: str) -> list[Sample]:
    """Every sample the endpoint serves (fails the test on anything but 200 and valid text format)."""
    with urllib.request.urlopen(url, timeout=30) as response:  # a test's own loopback URL
        assert response.status == 200
        assert response.headers.get_content_type() == "text/plain"
        text = response.read().decode()
    return [
        Sample(family.name, s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels`` (0 when there is none)."""
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else 0.0


def label_values(samples: list[Sample], name: str, label: str) -> set[str]:
    return {s.labels[label] for s in samples if s.name == name and label in s.labels}
