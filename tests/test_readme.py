"""The README's service example runs as written (only paths and the port are changed).

The greeter listens on port 0; the test reads the port it got from /proc and
writes it into caller.toml, which is only read once the greeter listens.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.testing import short_tmpdir
from tests.support.procs import listening_ports
from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def block(after: str, lang: str) -> str:
    """The first ```lang block after the text ``after``."""
    start = README.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {lang} block after {after!r}"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_greeter_and_caller_run_as_written_in_production(tmp_path: Path) -> None:
    sockets = short_tmpdir()

    def adapt(text: str, port: int) -> str:
        return text.replace("/tmp/meshnode-agent", str(sockets)).replace("127.0.0.1:7002", f"127.0.0.1:{port}")

    (tmp_path / "greeter.py").write_text(block("`greeter.py`:", "python"))
    (tmp_path / "greeter.toml").write_text(adapt(block("`greeter.toml`", "toml"), 0))
    (tmp_path / "caller.py").write_text(block("A caller reaches it", "python"))
    caller_toml = README[README.index("```toml\n# caller.toml") + len("```toml\n") :].split("```")[0]
    (tmp_path / "agent.toml").write_text(adapt((ROOT / "examples" / "agent.toml").read_text(), 0))
    production = {k: v for k, v in os.environ.items() if not k.startswith(("MESHNODE_", "SPIFFE_"))}
    production["MESHNODE_MODE"] = "production"
    procs: list[subprocess.Popen[str]] = []
    try:
        agent = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "agent", "--config", "agent.toml"],
                                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(agent)
        assert agent.stdout is not None and "ready" in agent.stdout.readline()
        greeter = subprocess.Popen([sys.executable, "greeter.py"], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=production)
        procs.append(greeter)

        def greeter_listens() -> bool:
            assert greeter.poll() is None, greeter.communicate()[1]
            return bool(listening_ports(greeter.pid))

        eventually(greeter_listens, "the greeter to listen")
        (port,) = listening_ports(greeter.pid)
        (tmp_path / "caller.toml").write_text(adapt(caller_toml, port))
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
        assert greeter.wait(timeout=60) == 0
        # logging.basicConfig in greeter.py: the ready line is a log record a library user sees
        _, logged = greeter.communicate()
        assert "INFO:meshnode.node:node: greeter serving meshnode.demo.v1.Echo on 127.0.0.1:" in logged, logged
    finally:
        for p in procs:  # cleanup that cannot raise, so it never hides the failure that got here
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(sockets, ignore_errors=True)
