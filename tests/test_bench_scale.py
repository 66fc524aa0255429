"""``meshnode bench --scale --quick`` runs every scale scenario end to end, with real processes.

Not a timed test: nothing asserts how fast anything is, only that each
scenario ran (a real ``meshnode run`` per peer count, real mTLS clients, a
real SVID rotation from the dev agent), nothing failed, and the report has
every table with sane numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECTIONS = (
    "## Decision cost vs policy size",
    "## Memory and start-up vs configured peers",
    "## Server cost vs concurrent mTLS connections",
    "## Rotation cost at scale",
    "## Process start-up",
)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("scale")
    proc = subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "bench", "--scale", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    return proc, out


@pytest.mark.slow
def test_scale_quick_exits_0_and_prints_every_table(scale_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = scale_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = (out / "scale.md").read_text()
    assert text in proc.stdout
    for section in SECTIONS:
        assert section in text, section
    assert "Command: `meshnode bench --scale --quick --out" in text


@pytest.mark.slow
def test_scale_quick_numbers_are_sane(scale_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = scale_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "scale.json").read_text())
    settings = result["settings"]

    decisions = result["policy"]["decisions"]
    assert {(r["kind"], r["rules"]) for r in decisions} == {
        (kind, n) for kind in ("a43", "allowlist") for n in settings["policy_sizes"]}
    for row in decisions:
        assert all(_positive(row[k]) for k in ("miss_version_us", "miss_caller_us", "hit_us")), row
    load = result["policy"]["load"]
    assert load["rules"] == max(settings["policy_sizes"])
    assert all(_positive(v) for k, v in load.items() if k.endswith("_ms")), load

    peers = result["peers"]["rows"]
    assert [r["peers"] for r in peers] == list(settings["peer_counts"]) * len(settings["peer_modes"])
    for row in peers:
        assert _positive(row["ready_ms"]) and _positive(row["rss_mib"]) and row["fds"] > 0, row
    assert all(_number(v) for v in result["peers"]["rss_kib_per_idle_peer"].values())

    connections = result["connections"]["rows"]
    assert [r["connections"] for r in connections] == list(settings["connections"]["levels"])
    for row in connections:
        assert row["connected"] == row["connections"] and row["failed"] == 0, row
        assert row["calls"] > 0 and row["errors"] == 0, row["error_samples"]
        assert _positive(row["server_rss_mib"]) and _positive(row["p50_ms"]) and _positive(row["p99_ms"]), row
        assert _number(row["server_cpu_pct"]) and row["server_cpu_pct"] >= 0, row

    rotation = result["rotation"]
    assert rotation["rotations"] == settings["connections"]["rotations"] and rotation["rotations"] > 0
    assert rotation["connected"] == rotation["connections"] and rotation["failed"] == 0
    assert rotation["calls"] > 0 and rotation["errors"] == 0, rotation["error_samples"]
    assert _number(rotation["cost_cpu_s"]["median"])
    for pair in rotation["each"]["quiet"]:  # after each rotation, every peer channel carried a call
        assert pair["rotation"]["relay_calls"] == rotation["peers"] and pair["rotation"]["errors"] == 0, pair

    startup = {r["command"]: r for r in result["startup"]["rows"]}
    assert set(startup) == {"meshnode run (to ready)", "meshnode --help", "python -c 'import grpc'"}
    assert all(_positive(r["ms"]["median"]) and _positive(r["vs_import_grpc"]) for r in startup.values())
