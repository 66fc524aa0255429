"""Private runtime directories that name their owner, and removing those a killed process left behind.

The dev agent keeps the sockets behind its uid gates in a 0700 directory
under ``/tmp``; a process that is SIGKILLed cannot remove it. So each such
directory gets an ``owner`` file naming the process that made it (pid,
its start time, the boot and the pid namespace), and :func:`remove_stale`
removes a directory only when all of this holds:

* its name has the prefix, and it is a real directory (a symlink is never
  followed), owned by this process's uid, with no group/other permissions;
* its ``owner`` file is a regular file of this uid in meshnode's format;
* the owner is provably dead: another boot, or (same boot and pid
  namespace) no process with that pid and start time;
* every entry in it is a socket or regular file of this uid whose name the
  caller expects (nothing else is ever deleted, nothing recursively).

Anything that does not pass is left alone, silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["OWNER_FILE", "make_private_dir", "remove_stale"]

log = logging.getLogger(__name__)

OWNER_FILE = "owner"
_HEADER = "meshnode private directory v1"
_FIELDS = re.compile(r"pid=(\d{1,10})\nstart=(\d{1,20})\nboot=([0-9a-f-]{0,64})\npidns=([^\n]{0,64})\n")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text[text.rindex(")") + 2 :].split()[19])  # fields after "(comm)": state is field 3
    except (ValueError, IndexError):
        return None


def _owner_text() -> str:
    pid = os.getpid()
    return f"{_HEADER}\npid={pid}\nstart={_start_time(pid) or 0}\nboot={_boot_id()}\npidns={_pid_namespace()}\n"


def make_private_dir(prefix: str, base: Path) -> Path:
    """A new 0700 directory ``<base>/<prefix>XXXX`` with an ``owner`` file naming this process."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    fd = os.open(path / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_owner_text())
    return path


def _owner_dead(text: str) -> bool:
    """True only when the process ``text`` names has provably ended."""
    header, _, rest = text.partition("\n")
    match = _FIELDS.fullmatch(rest)
    if header != _HEADER or match is None:
        return False
    pid, start, boot, pidns = int(match[1]), int(match[2]), match[3], match[4]
    if boot and _boot_id() and boot != _boot_id():
        return True  # made before the last reboot
    if not pidns or pidns != _pid_namespace():
        return False  # that pid means another process (or nothing we can see) in our namespace
    if pid == os.getpid():
        return False
    now = _start_time(pid)
    if now is not None and start:
        return now != start  # the pid was reused by a later process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _remove_if_stale(path: Path, names_ok: Callable[[str], bool]) -> bool:
    uid = os.geteuid()
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o077:
        return False
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if (os.fstat(dir_fd).st_ino, os.fstat(dir_fd).st_dev) != (st.st_ino, st.st_dev):
            return False  # replaced since the lstat
        try:
            owner_fd = os.open(OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError:
            return False
        with os.fdopen(owner_fd) as owner:
            owner_st = os.fstat(owner.fileno())
            if not stat.S_ISREG(owner_st.st_mode) or owner_st.st_uid != uid or owner_st.st_size > 4096:
                return False
            try:
                text = owner.read(4096)
            except (OSError, UnicodeDecodeError):
                return False
        if not _owner_dead(text):
            return False
        names = os.listdir(dir_fd)
        for name in names:
            if name != OWNER_FILE and not names_ok(name):
                return False
            entry = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if entry.st_uid != uid or not (stat.S_ISSOCK(entry.st_mode) or stat.S_ISREG(entry.st_mode)):
                return False
        for name in names:
            if name != OWNER_FILE:
                os.unlink(name, dir_fd=dir_fd)
        os.unlink(OWNER_FILE, dir_fd=dir_fd)
        os.rmdir(path)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def remove_stale(prefix: str, base: Path, names_ok: Callable[[str], bool]) -> list[Path]:
    """Remove the directories ``<base>/<prefix>*`` that provably belonged to processes now dead.

    ``names_ok(name)`` says whether a file name is one such a directory holds
    (the ``owner`` file aside); a directory holding anything else is kept.
    Returns the removed paths.
    """
    removed: list[Path] = []
    candidates: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(base) as entries:
        candidates = [Path(base) / entry.name for entry in entries if entry.name.startswith(prefix)]
    for path in sorted(candidates):
        if _remove_if_stale(path, names_ok):
            removed.append(path)
    return removed
