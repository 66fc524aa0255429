"""The dev agent refuses a socket_dir (and a dev CA a state_dir) that another user could write.

Whoever can swap a socket in the agent's socket_dir serves workloads their own
CA bundle; whoever can write a state_dir plants their own CA key. Each test
builds the directory layout an attacker would leave, then starts the real
agent (in-process, or `meshnode agent` for what an operator sees) and
checks it refuses with a message that names the fix, and binds nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from spiffe import WorkloadApiClient

from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.ca import DevCA
from meshnode.devagent.config import AgentConfig, EntryConfig, default_socket_dir, load_agent_config
from meshnode.errors import ConfigError
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import short_tmpdir

ALPHA = "spiffe://example.org/node/alpha"
OTHER_UID = 4242
ME = os.geteuid()
as_root = pytest.mark.skipif(ME != 0, reason="giving a directory to another uid needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A private directory (0700, ours) to build layouts in; nothing outside it is touched."""
    path = short_tmpdir("mn-dirs-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(socket_dir: Path, state_dir: Path | None = None) -> AgentConfig:
    return AgentConfig(
        trust_domain="example.org", socket_dir=socket_dir, state_dir=state_dir,
        entries=(EntryConfig("alpha", parse_spiffe_id(ALPHA)),),
    )


def refused(socket_dir: Path, *needles: str) -> str:
    """Start the agent on ``socket_dir``; it must refuse with every needle in the message and bind nothing."""
    before = sorted(os.listdir(socket_dir)) if socket_dir.is_dir() else None
    with pytest.raises(ConfigError) as info:
        DevAgentThread(config(socket_dir)).start()
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    if before is not None:
        assert sorted(os.listdir(socket_dir)) == before  # no socket bound in a directory it refused
    return message


@as_root
def test_a_socket_dir_owned_by_another_uid_is_refused(base: Path) -> None:
    planted = base / "meshnode-agent"
    planted.mkdir(mode=0o755)
    os.chown(planted, OTHER_UID, OTHER_UID)  # what another user's `mkdir /tmp/meshnode-agent` leaves
    refused(planted, f"socket_dir {planted} belongs to uid {OTHER_UID}, not to this process's uid {ME}",
            "hand workloads their own CA bundle", "remove the directory", "$XDG_RUNTIME_DIR/meshnode-agent")


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777], ids=["0775", "0757", "0777"])
def test_a_socket_dir_writable_by_group_or_others_is_refused(base: Path, mode: int) -> None:
    shared = base / "sockets"
    shared.mkdir()
    shared.chmod(mode)
    refused(shared, f"is writable by group or others (mode {mode:04o})", f"chmod go-w {shared}")


def test_a_symlinked_socket_dir_is_refused(base: Path) -> None:
    real = base / "real"
    real.mkdir(mode=0o755)
    link = base / "sockets"
    link.symlink_to(real)
    refused(link, f"socket_dir {link} is a symlink (to {real})", "set socket_dir to the real directory")
    assert os.listdir(real) == []


def test_a_parent_writable_by_others_is_refused(base: Path) -> None:
    parent = base / "shared"
    parent.mkdir()
    parent.chmod(0o777)  # not sticky: anyone may rename our directory away and put theirs in its place
    refused(parent / "sockets", f"the directory {parent} on the way is writable by group or others (mode 0777)",
            "not a root-owned sticky directory like /tmp", f"chmod go-w {parent}")


@as_root
def test_in_a_sticky_shared_directory_the_entry_on_the_way_must_be_ours(base: Path) -> None:
    tmp_like = base / "tmp"
    tmp_like.mkdir()
    tmp_like.chmod(0o1777)  # root-owned and sticky, like /tmp
    theirs = tmp_like / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    refused(theirs / "sockets", f"{theirs} (in the shared directory {tmp_like}) belongs to uid {OTHER_UID}")
    link = tmp_like / "link"
    mine = base / "mine"
    mine.mkdir(mode=0o755)
    link.symlink_to(mine)
    os.lchown(link, OTHER_UID, OTHER_UID)  # they can re-point it whenever they like
    refused(link / "sockets", f"{link} (in the shared directory {tmp_like}) belongs to uid {OTHER_UID}")


def test_a_good_socket_dir_is_created_private_and_served(base: Path) -> None:
    tmp_like = base / "tmp"
    tmp_like.mkdir()
    tmp_like.chmod(0o1777)  # sticky and shared, like /tmp: fine, the entries below it are ours
    socket_dir = tmp_like / "meshnode-agent" / "sockets"
    old_umask = os.umask(0o002)  # a group-friendly umask must not leave a group-writable directory
    try:
        with DevAgentThread(config(socket_dir)) as agent, \
                WorkloadApiClient(agent.socket_address("alpha"), default_timeout=5) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == ALPHA
    finally:
        os.umask(old_umask)
    for directory in (socket_dir, socket_dir.parent):
        assert directory.stat().st_uid == ME and directory.stat().st_mode & 0o777 == 0o755


def test_an_existing_private_socket_dir_is_used(base: Path) -> None:
    socket_dir = base / "sockets"
    socket_dir.mkdir(mode=0o700)
    with DevAgentThread(config(socket_dir)) as agent:
        assert agent.socket_path("alpha").is_socket()


@as_root
def test_a_state_dir_another_user_could_write_is_refused(base: Path) -> None:
    planted = base / "state"
    planted.mkdir(mode=0o755)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"devca: state_dir {planted} belongs to uid {OTHER_UID}.*own CA key"):
        DevCA("example.org", state_dir=planted)
    assert os.listdir(planted) == []


def test_a_ca_key_readable_by_others_is_refused(base: Path) -> None:
    state = base / "state"
    DevCA("example.org", state_dir=state)
    assert (state / "ca.key.pem").stat().st_mode & 0o777 == 0o600 and state.stat().st_mode & 0o777 == 0o700
    (state / "ca.key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match=r"ca\.key\.pem is open to group or others \(mode 0644\).*chmod 600"):
        DevCA("example.org", state_dir=state)


def test_the_default_socket_dir_is_private_to_the_user(tmp_path: Path) -> None:
    assert default_socket_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/meshnode-agent")
    assert default_socket_dir({}) == Path(f"/tmp/meshnode-sockets-{ME}")
    assert default_socket_dir({"XDG_RUNTIME_DIR": "relative"}) == Path(f"/tmp/meshnode-sockets-{ME}")
    path = tmp_path / "agent.toml"
    path.write_text(f'trust_domain = "example.org"\n[[entries]]\nname = "alpha"\nspiffe_id = "{ALPHA}"\n')
    assert load_agent_config(path).socket_dir == default_socket_dir()


@as_root
def test_meshnode_agent_says_what_to_do_about_a_planted_socket_dir(base: Path) -> None:
    planted = base / "meshnode-agent"
    planted.mkdir(mode=0o777)
    os.chown(planted, OTHER_UID, OTHER_UID)
    path = base / "agent.toml"
    path.write_text(f'trust_domain = "example.org"\nsocket_dir = "{planted}"\n'
                    f'[[entries]]\nname = "alpha"\nspiffe_id = "{ALPHA}"\n')
    proc = subprocess.run([sys.executable, "-m", "meshnode.cli", "agent", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"socket_dir {planted} belongs to uid {OTHER_UID}" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(planted) == []
