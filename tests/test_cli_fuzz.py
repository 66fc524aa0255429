"""The commands that read configuration, as real processes: whatever the arguments and the files
they name, `meshnode run/check/policy check/agent` end with a documented exit status and, on error,
one line naming the file or the key - never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def printable(text: str) -> str:
    """How meshnode shows a file name holding control characters: escaped, on one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


#: documented exit statuses (README / each command's --help); argparse usage errors are 2
EXITS = {
    "run": {2, 3, 4},  # the pool holds no config a node could start with: 0 would mean it served
    "check": {0, 1, 2, 3},
    "policy": {0, 2},
    "agent": {2, 4},
}

NODE_HEAD = '[node]\nname = "a"\nlisten = "127.0.0.1:0"\n'
AGENT_HEAD = 'trust_domain = "example.org"\nsocket_dir = "/tmp/meshnode-cli-fuzz"\n'
ENTRY = '[[entries]]\nname = "a"\nspiffe_id = "spiffe://example.org/a"\n'

FILES: dict[str, str | bytes | None] = {
    "missing.toml": None,
    "empty.toml": "",
    "garbage.toml": b"\xff\xfe\x00\x01[[[",
    "deep.toml": "x = " + "[" * 100_000 + "]" * 100_000,
    "deep.json": "[" * 100_000 + "]" * 100_000,
    "bigint.json": '{"name": ' + "9" * 5000 + "}",
    "nul.json": '{"name": "p\\u0000", "allow_rules": [{"name": "\\u0000"}]}',
    "valid.json": '{"name": "p", "allow_rules": [{"name": "all"}]}',
    "nan.toml": NODE_HEAD + "shutdown_grace = nan\n",
    "inf-timeout.toml": NODE_HEAD + '[identity]\nsource = "dev"\ntimeout = inf\n',
    "superscript-port.toml": '[node]\nname = "a"\nlisten = "127.0.0.1:\u00b2"\n',
    "huge-age.toml": NODE_HEAD + "max_connection_age = 9223372036854775807\n",
    "bad-service.toml": NODE_HEAD + 'services = ["os.path:sep"]\n',
    "tilde.toml": NODE_HEAD + '[identity]\nsource = "files"\ncert = "~nosuchuser/c"\nkey = "k"\nbundle = "b"\n',
    "check-only.toml": NODE_HEAD + '[identity]\nsource = "dev"\n',  # valid: `check` reports, `run` is not fed it
    "agent-uid.toml": AGENT_HEAD + ENTRY + "uid = 1099511627776\n",
    "agent-nan.toml": AGENT_HEAD + "ca_overlap = nan\n" + ENTRY,
    "new\nline.toml": NODE_HEAD + "keepalive = 0.5\n",
    "adir": "<directory>",
}
RUNNABLE = {"check-only.toml", "valid.json"}  # files a command may accept (never given to run or agent)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("cli-fuzz")
    for name, content in FILES.items():
        if content == "<directory>":
            (d / name).mkdir()
        elif isinstance(content, bytes):
            (d / name).write_bytes(content)
        elif content is not None:
            (d / name).write_text(content)
    yield d


def meshnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshnode.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "MESHNODE_MODE": "", "MESHNODE_LISTEN": ""})


def assert_contained(done: subprocess.CompletedProcess[str], command: str, path: Path) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in EXITS[command], (done.returncode, done.stderr)
    if done.returncode == 2:
        last = done.stderr.strip().splitlines()[-1]
        if not done.stderr.startswith("usage:"):  # argparse names the argument itself
            assert last.startswith("meshnode: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert printable(str(path)) in last or "'" in last, last  # the file, or a quoted key


COMMANDS = {
    "run": lambda p: ["run", str(p)],
    "check": lambda p: ["check", str(p)],
    "policy": lambda p: ["policy", "check", str(p)],
    "agent": lambda p: ["agent", "--config", str(p)],
}
EXTRA = st.lists(st.sampled_from(["-v", "--bogus", "", "-", "--", "--socket", "x" * 300, "\u00b2"]), max_size=2)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(COMMANDS)), name=st.sampled_from(sorted(FILES)), extra=EXTRA)
def test_fuzzed_command_lines_end_in_a_documented_status_without_traceback(
    pool: Path, command: str, name: str, extra: list[str]
) -> None:
    if command in ("run", "agent") and name in RUNNABLE:
        name = "nan.toml"
    path = pool / name
    done = meshnode(*COMMANDS[command](path), *extra)
    assert_contained(done, command, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "name", "says"),
    [
        ("run", "nan.toml", "'node.shutdown_grace' must be a finite number, not nan"),
        ("run", "inf-timeout.toml", "'identity.timeout' must be a finite number, not inf"),
        ("run", "superscript-port.toml", "is not host:port"),
        ("run", "huge-age.toml", "'node.max_connection_age' must be at most 2000000"),
        ("run", "deep.toml", "is nested too deeply to be a configuration file"),
        ("run", "bad-service.toml", "'node.services' item 0: module 'os.path' has no class 'sep'"),
        ("check", "tilde.toml", "'identity.cert' cannot expand '~nosuchuser'"),
        ("policy", "deep.json", "JSON nested too deeply to be a policy"),
        ("policy", "bigint.json", "not a usable JSON document"),
        ("agent", "agent-uid.toml", "'entries[0].uid' must be at most 4294967294, not 1099511627776"),
        ("agent", "agent-nan.toml", "'ca_overlap' must be a finite number, not nan"),
        ("run", "new\nline.toml", "new\\nline.toml: 'node.keepalive' must be 0 (off) or at least 1 second"),
    ],
)
def test_the_reported_config_faults_exit_2_in_one_line(pool: Path, command: str, name: str, says: str) -> None:
    done = meshnode(*COMMANDS[command](pool / name))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
