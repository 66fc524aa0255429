"""``meshnode run node.toml``: run one node until SIGTERM/SIGINT.

Exit status: 0 after a clean stop; 2 invalid configuration or policy;
3 identity unavailable or unusable (production); 4 cannot serve (port in use).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from meshnode.cli._logging import setup_logging
from meshnode.config.node import load_node_config


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

    def ready(node: Node) -> None:
        for note in node.notes:
            print(f"meshnode: NOTE: {note}", file=sys.stderr, flush=True)
        where = f"on {node.address}" if node.address is not None else "(client only, no port)"
        print(f"meshnode: node {config.name} ready {where} as {node.spiffe_id} (mode {config.mode})", flush=True)

    async def main() -> None:
        await Node(config).serve_until_signal(ready=ready)

    try:
        asyncio.run(main())
    finally:
        handle.shutdown()
    return 0
