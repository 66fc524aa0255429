"""``meshnode bench --quick`` runs end to end and its numbers are sane.

Not a timed test: nothing here asserts how fast meshnode is, only that every
configuration ran, nothing failed and the report is complete.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CORE_VARIANTS = {"A", "B", "G", "K", "C", "N", "D", "M", "E", "E3"}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "bench", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600,  # a hang guard: the run itself takes about a minute
    )
    return proc, out


@pytest.mark.slow
def test_quick_bench_exits_0_and_prints_the_table(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| workload | variant | calls/s |" in proc.stdout
    assert "## Targets" in proc.stdout
    assert (out / "bench.md").read_text() in proc.stdout
    assert "Client CPU per call, 3 endpoints vs 1 (E3 / E" in proc.stdout  # a peer of 3 endpoints vs 1


@pytest.mark.slow
def test_every_variant_made_calls_without_errors(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _proc, out = quick_run
    result = json.loads((out / "bench.json").read_text())
    ran = set(result["variants"])
    assert CORE_VARIANTS <= ran
    assert ("F" in ran) != ("F" in result["skipped"])  # spiffe-id channels ran, or say why not
    assert ("F3" in ran) != ("F3" in result["skipped"])
    summary = result["throughput"]["summary"]
    assert len(summary) == 5  # unary and stream, 1 and many callers; a long stream
    for workload, rows in summary.items():
        assert set(rows) == ran, workload
        for name, row in rows.items():
            where = f"{workload}, {name}"
            assert row["calls"] > 0 and row["errors"] == 0, where
            assert _positive(row["throughput_ratio"]["median"]), where
            assert _positive(row["server_cpu_ratio"]["median"]), where
            assert _positive(row["server_cpu_us"]["median"]) and _positive(row["client_cpu_us"]["median"]), where
            assert 0 < row["p50_ms"]["median"] <= row["p99_ms"]["median"], where
        assert rows["B"]["throughput_ratio"]["median"] == 1.0
        # the meshnode servers next to the hand-written authorizing server G, round by round
        assert _positive(rows["C"]["vs_limit"]["server_cpu_ratio"]["median"]), workload
        assert _positive(rows["N"]["vs_limit"]["throughput_ratio"]["median"]), workload
    assert result["tracing"]["spans_exported"] > 0  # D really traced
    metrics = result["metrics"]  # M really recorded every call it served (its client's start-up call too)
    assert metrics["calls_counted"] >= metrics["calls_made"] > 0
    for workload, rows in summary.items():
        assert _positive(rows["M"]["vs_node"]["server_cpu_ratio"]["median"]), workload


@pytest.mark.slow
def test_handshakes_rotation_and_first_calls_are_reported(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _proc, out = quick_run
    result = json.loads((out / "bench.json").read_text())
    handshakes = result["handshakes"]
    assert handshakes["errors"] == 0
    assert _positive(handshakes["ratio"]["median"])
    rotation = result["rotation"]
    assert rotation["rotations"] >= 1 and rotation["ca_rotations"] >= 1
    assert rotation["calls"] > 0 and rotation["failed_calls"] == 0, rotation["error_samples"]
    assert _positive(rotation["pickup_ms"]["median"])  # the server saw the new client certificates
    spiffe_id = result["rotation_spiffe_id"]
    if spiffe_id is not None:  # F ran: the spiffe-id channel's calls carried the new client certificate too
        assert spiffe_id["calls"] > 0 and spiffe_id["failed_calls"] == 0, spiffe_id["error_samples"]
        assert _positive(spiffe_id["pickup_ms"]["median"]) and spiffe_id["pickup_ms"]["missing"] == 0
    for name in ("C", "E", "E3"):
        assert _positive(result["first_calls"][name]["ms"]["median"]), name
    statuses = {t["target"]: t["status"] for t in result["targets"]}
    assert set(statuses.values()) <= {"PASS", "MISS", "INFO", "n/a"}
    assert "dynamic/static handshake rate" in statuses


@pytest.mark.slow
def test_rotation_latency_compares_provider_slots_with_the_file_reread(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.bench.rotation_latency", "--rounds", "1", "--rotations", "1",
         "--interval", "0.3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,  # a hang guard
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "rotation-latency.json").read_text())["summary"]
    assert set(summary) == {"slots", "reread"}
    for mode, s in summary.items():
        assert s["rotations"] == 1 and s["failed_calls"] == 0, mode
        assert _positive(s["fresh_ms"]["median"]), mode  # a new connection presented the new SVID
    assert summary["reread"]["channel_ms"]["missing"] == 1  # the open channel kept its connection...
    assert _positive(summary["slots"]["channel_ms"]["median"])  # ...unless the push moved it to a fresh slot
    assert "| fresh certificate provider slot (meshnode now) | 1 | 0 |" in proc.stdout
