"""The README's service example runs as written (only paths and the port are changed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshnode.testing import free_port, short_tmpdir

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def block(after: str, lang: str) -> str:
    """The first ```lang block after the text ``after``."""
    start = README.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {lang} block after {after!r}"
    return match.group(1)


def wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the greeter never listened")


@pytest.mark.slow
def test_the_readme_greeter_and_caller_run_as_written_in_production(tmp_path: Path) -> None:
    sockets = short_tmpdir()
    port = free_port()  # the README's greeter listens on a fixed port its caller.toml names

    def adapt(text: str) -> str:
        return text.replace("/tmp/meshnode-agent", str(sockets)).replace("127.0.0.1:7002", f"127.0.0.1:{port}")

    (tmp_path / "greeter.py").write_text(block("`greeter.py`:", "python"))
    (tmp_path / "greeter.toml").write_text(adapt(block("`greeter.toml`", "toml")))
    (tmp_path / "caller.py").write_text(block("A caller reaches it", "python"))
    caller_toml = README[README.index("```toml\n# caller.toml") + len("```toml\n") :].split("```")[0]
    (tmp_path / "caller.toml").write_text(adapt(caller_toml))
    agent_toml = adapt((ROOT / "examples" / "agent.toml").read_text())
    (tmp_path / "agent.toml").write_text(agent_toml)
    production = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNODE_", "SPIFFE_"))}
    production["MESHNODE_MODE"] = "production"
    procs = []
    try:
        agent = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "agent", "--config", "agent.toml"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(agent)
        assert agent.stdout is not None and "ready" in agent.stdout.readline()
        greeter = subprocess.Popen([sys.executable, "greeter.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=production)
        procs.append(greeter)
        wait_port(port, greeter)
        caller = subprocess.run([sys.executable, "caller.py"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60, env=production)
        assert caller.returncode == 0, caller.stderr
        assert caller.stdout.strip() == (
            "HELLO answered by spiffe://example.org/node/beta for spiffe://example.org/node/alpha"
        )
        # the console script, as the README shows it: the greeter's class allow list counts as its policy
        meshnode = str(Path(sys.executable).parent / "meshnode")
        check = subprocess.run([meshnode, "check", "greeter.toml"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=60, env=production)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "result: ready for production" in check.stdout
        greeter.send_signal(signal.SIGTERM)
        assert greeter.wait(timeout=15) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        shutil.rmtree(sockets, ignore_errors=True)
