"""``meshnode run node.toml``: run one node until SIGTERM/SIGINT.

Exit status: 0 after a clean stop; 2 invalid configuration or policy;
3 identity unavailable or unusable (production); 4 cannot serve (port in use).

At start the soft open-file limit is raised to the hard limit, and gRPC
core's stderr is routed through a relay that turns its per-connection
lines (a failed TLS handshake each) into a counter and one summary line
per 10 s; GRPC_VERBOSITY or GRPC_TRACE, when set, bring every line back.

On SIGTERM/SIGINT, calls still running after [node] shutdown_grace are
cancelled (one summary line). A plain ``def`` method cannot be interrupted:
if one still runs on a handler thread, the process exits without waiting
for it, so a stuck method never holds a stopping node.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import threading


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run a node from node.toml", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="path to node.toml")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshnode.cli._logging import announce, setup_logging
    from meshnode.config.node import load_node_config
    from meshnode.fdlimit import raise_soft_limit

    config = load_node_config(args.config)
    from meshnode.node import Node
    from meshnode.telemetry.corelog import CoreLogCapture
    from meshnode.telemetry.setup import configure_telemetry

    core_log = CoreLogCapture().start()  # first: the log set up next writes to the real stderr, not the relay
    try:
        setup_logging(args.verbose, config.log_format)
    except BaseException:
        core_log.close()
        raise
    fd_limit = raise_soft_limit("node", quiet=True)  # reported once up: a config error stays one line
    try:
        handle = configure_telemetry(config.telemetry, default_service_name=config.name)
    except BaseException:
        core_log.close()
        raise

    def ready(node: Node) -> None:
        logging.getLogger("meshnode.fdlimit").info("node: open-file limit (RLIMIT_NOFILE) %s", fd_limit.describe())
        for note in node.notes:
            announce(f"meshnode: NOTE: {note}", stream=sys.stderr, level=logging.WARNING)
        where = f"on {node.address}" if node.address is not None else "(client only, no port)"
        announce(f"meshnode: node {config.name} ready {where} as {node.spiffe_id} (mode {config.mode})")
        if node.metrics_url is not None:
            announce(f"meshnode: node {config.name} metrics on {node.metrics_url}")
        # what start-up made (modules, classes, config) lives as long as the process: keep it out of
        # every later collection of the cyclic GC (about 1% of a call's CPU under load)
        gc.freeze()

    async def main() -> None:
        await Node(config).serve_until_signal(ready=ready)

    try:
        asyncio.run(main())
    finally:
        core_log.close()  # before telemetry: its last counts reach the exporters
        handle.shutdown()
    _exit_if_handlers_are_stuck()
    return 0


def _exit_if_handlers_are_stuck() -> None:
    """Exit now if sync handlers still run: the interpreter would wait for them at exit, maybe forever."""
    from meshnode.server import HANDLER_THREAD_PREFIX

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
