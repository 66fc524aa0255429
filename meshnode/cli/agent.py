"""``meshnode agent --config agent.toml``: the dev SPIFFE Workload API agent.

Serves every [[entries]] of agent.toml on <socket_dir>/<name>.sock until
SIGTERM or SIGINT, then removes its sockets. [[entries]] tables that share a
name are served together on that socket (several SVIDs, each with its hint). Once every socket is bound it
prints one line on stdout, for parent processes to wait for:

    meshnode agent: ready trust_domain=example.org sockets=/tmp/meshnode-agent entries=alpha,beta

Signals: SIGUSR1 re-issues every SVID now and pushes it; SIGUSR2 rotates the
CA (the next CA enters the bundle first; the old one leaves it when the SVIDs
it signed expire).

Exit status: 0 after a clean stop; 2 invalid configuration (or socket_dir not
writable); 4 cannot serve (another agent serves a socket).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from meshnode.errors import MeshnodeError

if TYPE_CHECKING:
    from meshnode.devagent.config import AgentConfig

log = logging.getLogger("meshnode.cli.agent")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run the dev SPIFFE Workload API agent", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="AGENT_TOML", help="path to agent.toml")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshnode.cli._logging import setup_logging
    from meshnode.devagent.config import load_agent_config
    from meshnode.fdlimit import raise_soft_limit

    setup_logging(args.verbose)
    config = load_agent_config(args.config)
    raise_soft_limit("agent")
    asyncio.run(serve(config))
    return 0


async def serve(config: AgentConfig) -> None:
    """Run an agent until SIGTERM/SIGINT; SIGUSR1/SIGUSR2 rotate SVIDs / the CA."""
    from meshnode.cli._logging import announce
    from meshnode.devagent.agent import DevAgent

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: a stop request while binding still stops
        loop.add_signal_handler(sig, stop.set)
    rotations: set[asyncio.Task[None]] = set()

    def on_signal(what: str, rotate: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
        async def guarded() -> None:
            try:
                await rotate()
            except MeshnodeError as exc:
                log.error("agent: %s failed: %s", what, exc)

        def handler() -> None:
            task = loop.create_task(guarded())
            rotations.add(task)
            task.add_done_callback(rotations.discard)

        return handler

    async with DevAgent(config) as agent:
        loop.add_signal_handler(signal.SIGUSR1, on_signal("SVID rotation", agent.rotate_svids))
        loop.add_signal_handler(
            signal.SIGUSR2,
            on_signal("CA rotation", lambda: agent.rotate_ca(activate_after=config.ca_overlap)),
        )
        names = ",".join(config.sockets)  # one socket per name; a repeated name serves several SVIDs
        announce(f"meshnode agent: ready trust_domain={config.trust_domain} sockets={config.socket_dir} "
                 f"entries={names}")
        await stop.wait()
        for task in rotations:
            task.cancel()
        await asyncio.gather(*rotations, return_exceptions=True)
