"""Private runtime directories: a SIGKILLed dev agent's is removed at the next agent start, and
nothing that is not provably a dead meshnode process's own directory is ever touched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode import private_dirs
from meshnode.private_dirs import OWNER_FILE, make_private_dir, remove_stale
from meshnode.testing import short_tmpdir
from meshnode.xds.files import RuntimeDir

PREFIX = "meshnode-test-"


def names_ok(name: str) -> bool:
    return name in ("entry-0.sock", "deny-1000.sock")


# loads meshnode/private_dirs.py alone (importing meshnode takes a second), makes a directory, exits
_MAKE_AND_EXIT = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("private_dirs", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(module.make_private_dir(sys.argv[2], Path(sys.argv[3])))
"""


def dead_owner_dir(base: Path, prefix: str = PREFIX) -> Path:
    """A private directory made by a process that has exited since."""
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_AND_EXIT, private_dirs.__file__, prefix, str(base)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return Path(done.stdout.strip())


def bind_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))


@pytest.fixture
def base() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_the_directory_of_a_dead_owner_is_removed(base: Path) -> None:
    stale = dead_owner_dir(base)
    bind_socket(stale / "entry-0.sock")
    bind_socket(stale / "deny-1000.sock")
    assert remove_stale(PREFIX, base, names_ok) == [stale]
    assert not stale.exists()


def test_a_live_owner_keeps_its_directory(base: Path) -> None:
    mine = make_private_dir(PREFIX, base)
    bind_socket(mine / "entry-0.sock")
    assert remove_stale(PREFIX, base, names_ok) == []
    assert (mine / "entry-0.sock").exists()


@pytest.mark.parametrize("breakage", ["unknown-file", "subdirectory", "symlink-entry", "no-owner", "group-readable",
                                      "foreign-owner-file", "other-prefix"])
def test_anything_not_provably_a_dead_agents_own_directory_is_kept(base: Path, tmp_path: Path, breakage: str) -> None:
    stale = dead_owner_dir(base)
    bind_socket(stale / "entry-0.sock")
    target = tmp_path / "precious"
    target.write_text("keep me")
    if breakage == "unknown-file":
        (stale / "notes.txt").write_text("not ours")
    elif breakage == "subdirectory":
        (stale / "deny-1000.sock").mkdir()
    elif breakage == "symlink-entry":
        (stale / "deny-1000.sock").symlink_to(target)
    elif breakage == "no-owner":
        (stale / OWNER_FILE).unlink()
    elif breakage == "group-readable":
        stale.chmod(0o750)
    elif breakage == "foreign-owner-file":
        (stale / OWNER_FILE).write_text("meshnode private directory v1\npid=1\nstart=0\n")
    elif breakage == "other-prefix":
        stale = stale.rename(base / "other-dir")
    assert remove_stale(PREFIX, base, names_ok) == []
    assert stale.is_dir() and target.read_text() == "keep me"


def test_a_symlink_to_a_stale_directory_is_never_followed(base: Path, tmp_path: Path) -> None:
    elsewhere = dead_owner_dir(tmp_path)
    bind_socket(elsewhere / "entry-0.sock")
    (base / f"{PREFIX}link").symlink_to(elsewhere)
    assert remove_stale(PREFIX, base, names_ok) == []
    assert (elsewhere / "entry-0.sock").exists() and (base / f"{PREFIX}link").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another uid needs root")
def test_a_directory_of_another_uid_is_kept(base: Path) -> None:
    stale = dead_owner_dir(base)
    for path in (stale / OWNER_FILE, stale):
        os.chown(path, 65534, 65534)
    assert remove_stale(PREFIX, base, names_ok) == []
    assert (stale / OWNER_FILE).exists()


def test_a_killed_nodes_runtime_dir_and_the_key_in_it_are_removed_by_the_next_node(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node with spiffe-id peers keeps its key in a private runtime dir (xDS file_watcher)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    left = dead_owner_dir(base, "meshnode-alpha-")
    (left / "svid.pem").write_text("-----BEGIN PRIVATE KEY-----")
    (left / "bundle.example.org.pem").write_text("")
    (left / "2.svid.pem").write_text("-----BEGIN PRIVATE KEY-----")  # certificate provider slots' copies
    (left / "1.bundles.example.org.json").write_text("{}")
    bind_socket(left / "ads.sock")
    live = make_private_dir("meshnode-gamma-", base)
    (live / "svid.pem").write_text("in use")
    with RuntimeDir("beta") as rdir:
        assert rdir.path.parent == base
        assert not left.exists()
        assert (live / "svid.pem").read_text() == "in use"
    assert not rdir.path.exists()


def bound_socket_paths(pid: int) -> list[Path]:
    """The paths of the unix sockets process ``pid`` has open (its fds matched in /proc/net/unix)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            paths.append(Path(fields[7]))
    return paths


def private_dir_of(pid: int) -> Path:
    """The directory of the agent's private (uid-gated) entry socket."""
    (path,) = {p.parent for p in bound_socket_paths(pid) if p.name == "entry-0.sock"}
    return path


def start_agent(config: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "meshnode.cli", "agent", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "meshnode agent: ready" in line, proc.stderr.read() if proc.poll() is not None else line  # type: ignore[union-attr]
    return proc


@pytest.mark.slow
def test_a_killed_agents_private_dir_is_removed_when_the_next_agent_starts(base: Path) -> None:
    config = base / "agent.toml"
    config.write_text(
        f'trust_domain = "example.org"\nsocket_dir = "{base / "sockets"}"\n'
        f'[[entries]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/node/alpha"\nuid = {os.getuid()}\n'
    )
    first = start_agent(config)
    left = private_dir_of(first.pid)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert left.is_dir()
    second = start_agent(config)
    try:
        assert not left.exists()
        own = private_dir_of(second.pid)
        assert own.is_dir() and own != left
    finally:
        second.terminate()
        _, stderr = second.communicate(timeout=30)
    assert second.returncode == 0, stderr
    assert f"agent: removed {left}, left behind by an agent that was killed" in stderr
    assert not own.exists()
