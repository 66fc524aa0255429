"""Starting meshnode commands as child processes."""

from __future__ import annotations

import sys

_WITH_SOFT_NOFILE = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def meshnode_command(*args: str, soft_nofile: int | None = None) -> list[str]:
    """``python -m meshnode.cli ARGS``; with ``soft_nofile``, started under that soft open-file limit
    (set by a tiny exec wrapper: no preexec_fn in a threaded test process)."""
    command = [sys.executable, "-m", "meshnode.cli", *args]
    if soft_nofile is not None:
        command = [sys.executable, "-c", _WITH_SOFT_NOFILE, str(soft_nofile), *command]
    return command
