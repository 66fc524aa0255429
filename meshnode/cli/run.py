"""``meshnode run node.toml``: run one node until SIGTERM/SIGINT.

Exit status: 0 after a clean stop; 2 invalid configuration or policy;
3 identity unavailable or unusable (production); 4 cannot serve (port in use).

On SIGTERM/SIGINT, calls still running after [node] shutdown_grace are
cancelled (one summary line). A plain ``def`` method cannot be interrupted:
if one still runs on a handler thread, the process exits without waiting
for it, so a stuck method never holds a stopping node.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from meshnode.cli._logging import setup_logging
from meshnode.config.node import load_node_config
from meshnode.server import HANDLER_THREAD_PREFIX


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a node from node.toml", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="path to node.toml")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    config = load_node_config(args.config)
    from meshnode.node import Node
    from meshnode.telemetry.setup import configure_telemetry

    handle = configure_telemetry(config.telemetry, default_service_name=config.name)

    async def main() -> None:
        node = Node(config)
        await node.start()
        for note in node.notes:
            print(f"meshnode: NOTE: {note}", file=sys.stderr, flush=True)
        print(
            f"meshnode: node {config.name} ready on {node.address} as {node.spiffe_id} (mode {config.mode})",
            flush=True,
        )
        await node.serve_until_signal()

    try:
        asyncio.run(main())
    finally:
        handle.shutdown()
    _exit_if_handlers_are_stuck()
    return 0


def _exit_if_handlers_are_stuck() -> None:
    """Exit now if sync handlers still run: the interpreter would wait for them at exit, maybe forever."""
    stuck = [t for t in threading.enumerate() if t.name.startswith(HANDLER_THREAD_PREFIX) and t.is_alive()]
    if not stuck:
        return
    logging.getLogger("meshnode.node").warning(
        "node: %d handler thread(s) still running a cancelled call; exiting without waiting for them", len(stuck)
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
