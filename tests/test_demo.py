"""`meshnode demo` end to end, as a user runs it (what `make demo` runs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.wait import eventually


@pytest.mark.slow
def test_meshnode_demo_tells_the_whole_story_and_exits_0(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "demo", "--workdir", str(work)],
                          capture_output=True, text=True, timeout=120)
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
    # it stopped its processes and removed sockets and CA state, and kept what the printed command reads
    assert f"work dir {work};" in out
    printed = out.splitlines()[-1].split()
    assert printed[:3] == ["meshnode", "trace", "show"] and printed[3] == f"{work}/traces/*.jsonl"
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["agent.toml", "alpha.toml", "beta.toml", "gamma.toml", "gamma-policy.json", "logs", "traces"])
    trace_id = re.search(r"trace ([0-9a-f]{32})  7 spans", out)
    assert trace_id is not None, out
    shown = subprocess.run([sys.executable, "-m", "meshnode.cli", "trace", "show", "--no-color", "--width", "150",
                            "--trace-id", trace_id.group(1), *map(str, sorted(work.glob("traces/*.jsonl")))],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"trace {trace_id.group(1)}  7 spans  4 nodes (alpha, beta, client, gamma)")
    assert "demo: relay" in shown.stdout


def test_the_demo_does_not_write_into_a_directory_in_use(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "demo", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"meshnode: demo: --workdir {tmp_path} exists and is not an empty directory; name a new one\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_keep_running_ends_on_ctrl_c_with_exit_0_and_no_leftovers() -> None:
    import os
    import signal
    from pathlib import Path

    from tests.support.procs import Meshnode

    demo = Meshnode(["demo", "--keep-running", "--rotations", "2"], own_group=True)
    try:
        work = Path(demo.wait_line(r"work dir (\S+);", timeout=120).group(1))
        demo.wait_line(r"Ctrl-C here stops it", timeout=120)
        children = [int(pid) for pid in demo.wait_line(r"kill -USR1 (\d+)").groups()]
        # the command it printed reaches the running mesh (its ports come from the mesh, not fixed in advance)
        call = subprocess.run([sys.executable, "-m", "meshnode.cli", "demo", "call", "--workdir", str(work)],
                              capture_output=True, text=True, timeout=60)
        assert call.returncode == 0, call.stdout + call.stderr
        # the call is traced from a client root span: trace show draws all of it, client first
        trace_id = re.search(r"^trace ([0-9a-f]{32}): meshnode trace show", call.stdout, re.M)
        assert trace_id is not None, call.stdout
        files = sorted(str(p) for p in (work / "traces").glob("*.jsonl"))

        def shown() -> str:
            done = subprocess.run([sys.executable, "-m", "meshnode.cli", "trace", "show", "--no-color", "--width",
                                   "200", "--trace-id", trace_id.group(1), *files],
                                  capture_output=True, text=True, timeout=60)
            return done.stdout

        eventually(lambda: shown().count("Relay/Forward") == 6, "the 6 spans of the relay call in the files")
        root = shown().splitlines()[2].split()  # after the trace's line and the column titles
        assert root[:2] == ["/meshnode.demo.v1.Relay/Forward", "client"]
        # the top command it printed shows the three nodes
        urls = demo.wait_line(r"meshnode top (\S+) (\S+) (\S+)").groups()
        top = subprocess.run([sys.executable, "-m", "meshnode.cli", "top", "--once", *urls],
                             capture_output=True, text=True, timeout=60)
        assert top.returncode == 0, top.stdout + top.stderr
        for node in ("alpha", "beta", "gamma"):
            assert f"NODE {node}  spiffe://example.org/node/{node}" in top.stdout
        assert "meshnode.demo.v1.Relay/Forward  spiffe://example.org/demo/client" in top.stdout
        # a terminal's Ctrl-C: SIGINT to the whole foreground process group
        os.killpg(os.getpgid(demo.proc.pid), signal.SIGINT)
        assert demo.proc.wait(timeout=60) == 0, demo.output()
        out = demo.output()
        assert "everything held" in out and "SOMETHING FAILED" not in out
        assert "Traceback" not in out
        # the work dir stays for its traces; sockets and the dev CA are gone with the mesh
        assert sorted(p.name for p in work.iterdir() if p.is_dir()) == ["logs", "traces"]
        assert list(work.glob("traces/*.jsonl"))
        for pid in children:  # the agent it started is gone too
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        demo.stop()
