"""The process's open-file limit (RLIMIT_NOFILE): read it, raise it, budget connections under it.

Every accepted connection costs a file descriptor. With the usual soft
limit of 1024, a flood of idle connections exhausts the descriptors before
any handshake timeout helps, and then every legitimate connection fails
too ("File descriptor limit reached" from gRPC, EMFILE from asyncio).
The commands (``meshnode run``, ``meshnode agent``) raise the soft limit to
the hard limit at start, which needs no privilege; the library only reads
the limit, to keep connection caps below it.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

__all__ = ["RESERVED_FDS", "FdLimit", "connection_budget", "current_limit", "raise_soft_limit"]

log = logging.getLogger("meshnode.fdlimit")

#: descriptors kept free for everything that is not a client connection
#: (listeners, the event loop, peer channels, policy and SVID files, telemetry exporters, logs)
RESERVED_FDS = 128


@dataclass(frozen=True)
class FdLimit:
    soft: int
    hard: int
    raised_from: int | None = None  # the soft limit before :func:`raise_soft_limit` changed it

    def describe(self) -> str:
        hard = "unlimited" if self.hard == resource.RLIM_INFINITY else str(self.hard)
        raised = f" (raised from {self.raised_from})" if self.raised_from is not None else ""
        return f"soft {self.soft}{raised}, hard {hard}"


def current_limit() -> FdLimit:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FdLimit(soft, hard)


def raise_soft_limit(what: str, *, quiet: bool = False) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit; log what was done (``quiet``: only a
    failure; the caller reports the returned limit, e.g. once the process is up). Never raises.

    An unlimited hard limit is not a usable soft limit on Linux (``nr_open``
    caps it): then the soft limit goes to 1048576, the kernel's default
    ``nr_open``, or stays where it is when that is refused.
    """
    before = current_limit()
    target = before.hard if before.hard != resource.RLIM_INFINITY else 1 << 20
    if before.soft != resource.RLIM_INFINITY and before.soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, before.hard))
        except (ValueError, OSError) as exc:
            log.warning("%s: cannot raise the open-file limit from %d to %d: %s; it stays %s",
                        what, before.soft, target, exc, before.describe())
            return before
        after = FdLimit(target, before.hard, raised_from=before.soft)
        if not quiet:
            log.info("%s: raised the open-file limit (RLIMIT_NOFILE) from %d to %d, the hard limit",
                     what, before.soft, target)
        return after
    if not quiet:
        log.info("%s: open-file limit (RLIMIT_NOFILE) %s", what, before.describe())
    return before


def connection_budget(limit: FdLimit | None = None, fds_per_connection: int = 1) -> int:
    """How many connections fit under the soft limit after :data:`RESERVED_FDS` (at least 1)."""
    soft = (limit or current_limit()).soft
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, (soft - RESERVED_FDS) // fds_per_connection)
