"""`meshnode demo` end to end, as a user runs it (what `make demo` runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_meshnode_demo_tells_the_whole_story_and_exits_0() -> None:
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "demo"], capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for hop in (
        "hop 1  alpha  spiffe://example.org/node/alpha    verified caller spiffe://example.org/demo/client",
        "hop 2  beta   spiffe://example.org/node/beta     verified caller spiffe://example.org/node/alpha",
        "hop 3  gamma  spiffe://example.org/node/gamma    verified caller spiffe://example.org/node/beta",
    ):
        assert hop in out
    assert "PERMISSION_DENIED: authz: spiffe://example.org/demo/client is not allowed to call" in out
    assert "no allow rule matched" in out
    assert ", 0 failed" in out
    assert "every node serves a new SVID from the new CA" in out
    assert "7 spans from 4 processes in one trace" in out
    assert "everything held" in out
    assert "Traceback" not in proc.stderr
    # it cleaned up its processes and work directory
    work = next(line for line in out.splitlines() if "work dir" in line).split()[2].rstrip(";")
    assert subprocess.run(["test", "-e", work]).returncode != 0
