"""The ``meshnode`` command line: one module per command group.

Each module in :data:`COMMANDS` has ``register(subparsers)``, which adds its
sub-command(s) with ``set_defaults(func=...)``; ``func(args)`` returns the
exit status. A :class:`~meshnode.errors.MeshnodeError` becomes one line on
stderr and its ``exit_code``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from meshnode.cli._logging import report_error
from meshnode.config._reader import printable
from meshnode.errors import MeshnodeError

__all__ = ["COMMANDS", "main"]

COMMANDS = ["dnsname", "run", "check", "trace", "top", "agent", "svid", "policy", "demo", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="gRPC mesh nodes with SPIFFE identity-bound channels.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"meshnode.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except MeshnodeError as exc:
        report_error(f"meshnode: {printable(str(exc))}")  # one line, whatever a file name holds
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
