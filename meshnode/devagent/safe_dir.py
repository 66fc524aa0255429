"""Directories another user must not be able to write: the dev agent's socket_dir and a dev CA's state_dir.

Whoever can create, rename or delete entries in the directory that holds the
dev agent's sockets (or in any directory on the way to it) can put their own
server where a workload expects the agent and hand it their CA bundle and
SVIDs; whoever can do that to a dev CA's ``state_dir`` can plant their own CA
key. :func:`secure_dir` accepts a directory only when:

* it is a real directory, not a symlink (a symlink can be re-pointed);
* it is owned by this process's uid and not writable by group or others;
* every directory on the way to it is owned by root or this uid and not
  writable by group or others, except a root-owned sticky directory such as
  ``/tmp``, where only an entry's owner may rename or delete it: there the
  entry on the way must be this uid's or root's;
* every symlink followed on the way is owned by root or this uid.

Missing directories are created (with ``mode``). Otherwise the caller gets a
ConfigError (exit 2) that names the directory, what is wrong and the fix.
Access control lists are not inspected.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from meshnode.errors import ConfigError

__all__ = ["SOCKET_DIR", "STATE_DIR", "DirRole", "secure_dir"]

_MAX_LINKS = 40  # like the kernel's limit on symlinks followed in one lookup


@dataclass(frozen=True)
class DirRole:
    """What a directory is for: how messages name it, how to fix it, and the mode it is created with."""

    component: str  #: "agent"
    key: str  #: "socket_dir"
    harm: str  #: what another user could do with write access
    fix: str  #: the suggestion every message ends with
    mode: int  #: mode of a directory created here


SOCKET_DIR = DirRole(
    "agent", "socket_dir",
    "replace the agent's sockets and hand workloads their own CA bundle",
    "choose a socket_dir that only this user can write, e.g. $XDG_RUNTIME_DIR/meshnode-agent "
    "(the default when socket_dir is not set)",
    0o755,  # workloads of other users must reach the sockets; the sockets decide who gets an identity
)
STATE_DIR = DirRole(
    "devca", "state_dir",
    "plant their own CA key, which then signs every SVID",
    "choose a state_dir that only this user can write, e.g. ~/.local/state/meshnode-agent",
    0o700,
)


def secure_dir(directory: Path, role: DirRole, uid: int | None = None) -> None:
    """Create ``directory`` if needed; raise ConfigError unless no other user can swap what is in it."""
    uid = os.geteuid() if uid is None else uid
    # not abspath: it folds "x/.." by text, the kernel follows x first; the walk below does as the kernel
    path = directory if directory.is_absolute() else Path.cwd() / directory
    _create(path, role)
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{role.component}: cannot use {role.key} {path}: {exc.strerror}; {role.fix}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(
            f"{role.component}: {role.key} {path} is a symlink (to {os.readlink(path)}): it can be re-pointed "
            f"at another directory; set {role.key} to the real directory"
        )
    _Walk(path, role, uid).run()


def _create(path: Path, role: DirRole) -> None:
    """mkdir each missing component (Path.mkdir(parents=True) would make parents with the umask's mode)."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, role.mode if directory == path else 0o755)
        except FileExistsError:
            pass  # someone was faster: the checks decide whether it may stay in use
        except OSError as exc:
            raise ConfigError(
                f"{role.component}: cannot create {role.key} {path}: {exc.strerror}; choose a directory you can write"
            ) from None


class _Walk:
    """Walks a path from ``/`` as the kernel resolves it, following symlinks by hand, checking each step."""

    def __init__(self, target: Path, role: DirRole, uid: int) -> None:
        self.target, self.role, self.uid = target, role, uid

    def _refuse(self, problem: str, remedy: str = "") -> ConfigError:
        fix = f"{remedy}, or {self.role.fix}" if remedy else self.role.fix
        return ConfigError(f"{self.role.component}: {self.role.key} {self.target}: {problem}; {fix}")

    def run(self) -> None:
        current = Path("/")
        current_info = os.stat(current)
        self._directory(current, current_info, final=False)
        pending = list(self.target.parts[1:])
        links = 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                current = current.parent
                current_info = os.stat(current)
                continue
            step = current / name
            try:
                info = os.lstat(step)
            except OSError as exc:
                raise self._refuse(f"{step}: {exc.strerror}") from None
            self._entry(current, current_info, step, info)
            if stat.S_ISLNK(info.st_mode):
                links += 1
                if links > _MAX_LINKS:
                    raise self._refuse("too many symlinks on the way")
                link = Path(os.readlink(step))
                if link.is_absolute():
                    current, current_info = Path("/"), os.stat("/")
                    pending = list(link.parts[1:]) + pending
                else:
                    pending = list(link.parts) + pending
                continue
            self._directory(step, info, final=not pending)
            current, current_info = step, info

    def _entry(self, parent: Path, parent_info: os.stat_result, step: Path, info: os.stat_result) -> None:
        """In a shared sticky directory only an entry's owner may swap it: it must be ours or root's."""
        shared_sticky = parent_info.st_mode & stat.S_ISVTX and parent_info.st_mode & 0o022
        if shared_sticky and info.st_uid not in (0, self.uid):
            raise self._refuse(
                f"{step} (in the shared directory {parent}) belongs to uid {info.st_uid}, who could {self.role.harm}",
                "remove it",
            )
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, self.uid):
            raise self._refuse(f"the symlink {step} on the way belongs to uid {info.st_uid}")

    def _directory(self, directory: Path, info: os.stat_result, *, final: bool) -> None:
        mode = stat.S_IMODE(info.st_mode)
        role = self.role
        if not stat.S_ISDIR(info.st_mode):
            raise self._refuse(f"{directory} is not a directory")
        if final:
            if info.st_uid != self.uid:
                raise ConfigError(
                    f"{role.component}: {role.key} {self.target} belongs to uid {info.st_uid}, not to this "
                    f"process's uid {self.uid}: that user could {role.harm}; remove the directory (as uid "
                    f"{info.st_uid} or root) so it is created anew, or {role.fix}"
                )
            if mode & 0o022:
                raise ConfigError(
                    f"{role.component}: {role.key} {self.target} is writable by group or others (mode "
                    f"{mode:04o}): they could {role.harm}; run chmod go-w {self.target}, or {role.fix}"
                )
            return
        if info.st_uid not in (0, self.uid):
            raise self._refuse(
                f"the directory {directory} on the way belongs to uid {info.st_uid}, who could swap what lies below it"
            )
        if mode & 0o022 and not (mode & stat.S_ISVTX and info.st_uid == 0):
            raise self._refuse(
                f"the directory {directory} on the way is writable by group or others (mode {mode:04o}) and is "
                "not a root-owned sticky directory like /tmp, so others could swap what lies below it",
                f"run chmod go-w {directory}",
            )
