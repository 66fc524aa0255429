"""Identity telemetry of a running node: rotation counter, seconds-to-expiry gauge,
rotation / loss events with serial and not-after, never key material."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, datetime as dt, json, logging
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    records = []
    class Keep(logging.Handler):
        def emit(self, record): records.append(record.getMessage())
    logging.getLogger("meshnode.identity").addHandler(Keep())
    logging.getLogger("meshnode.identity").setLevel(logging.INFO)

    from meshnode.devagent.ca import DevCA
    from meshnode.testing import ManualSource
    from meshnode.node import Node
    from tests.support.nodes import node_config

    def points(data):
        found = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    found[m.name] = [p.value for p in m.data.data_points]
        return found

    def rotations(data):
        return points(data).get("meshnode.identity.rotations")

    async def main():
        ca = DevCA("example.org")
        src = ManualSource(ca, "spiffe://example.org/node/beta", ttl=dt.timedelta(seconds=3))
        async with Node(node_config("beta", allow=["spiffe://example.org/x"]), source=src) as node:
            first = node.identity
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30  # a safety net: each wait ends on what it waits for
            while not node.serving:  # health has been decided once (it starts undecided)
                assert loop.time() < deadline, "the node never reported SERVING"
                await asyncio.sleep(0.02)
            src.rotate(); src.rotate()
            while (data := reader.get_metrics_data()) is None or sum(rotations(data) or [0]) < 2:
                assert loop.time() < deadline, "the node never counted two rotations"
                await asyncio.sleep(0.02)
            while node.serving and loop.time() < deadline:
                await asyncio.sleep(0.1)
            out = {"serving_after_expiry": node.serving, "first_serial": first.serial,
                   "key": node.identity.key_pem.decode()}
        out["metrics"] = points(data)
        out["records"] = records
        print(json.dumps(out))

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_rotations_expiry_gauge_and_events() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["metrics"]["meshnode.identity.rotations"] == [2]
    (seconds_left,) = out["metrics"]["meshnode.identity.seconds_to_expiry"]
    assert 0 < seconds_left <= 3
    rotated = [r for r in out["records"] if r.startswith("identity.rotated")]
    assert len(rotated) == 2 and "svid.serial=" in rotated[0] and "svid.not_after=" in rotated[0]
    assert out["serving_after_expiry"] is False
    assert any(r.startswith("identity.lost") for r in out["records"])
    key_body = out["key"].splitlines()[1]
    assert all(key_body not in r and "PRIVATE" not in r for r in out["records"])
