"""The ``meshnode`` command line: one module per command group.

Each module in :data:`COMMANDS` has ``register(subparsers)``, which adds its
sub-command(s) with ``set_defaults(func=...)``; ``func(args)`` returns the
exit status. A :class:`~meshnode.errors.MeshnodeError` becomes one line on
stderr and its ``exit_code``.

Start-up is kept short (``meshnode probe`` runs in exec probes every few
seconds; ``meshnode --help`` is what a new user runs first): a command
module imports at its top only what ``register`` needs, and what its
command needs inside the command (``tests/test_cli_startup.py`` pins
this); ``main`` registers only the command it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from meshnode import __version__
from meshnode.errors import MeshnodeError

__all__ = ["COMMANDS", "main"]

#: command -> the module (in meshnode.cli) that registers it
COMMANDS = {
    "dns-name": "dnsname", "run": "run", "check": "check", "probe": "probe", "trace": "trace", "top": "top",
    "agent": "agent", "svid": "svid", "policy": "policy", "demo": "demo", "bench": "bench",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with the command ``only`` alone (what ``main`` runs)."""
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="gRPC mesh nodes with SPIFFE identity-bound channels.",
    )
    parser.add_argument("--version", action="version", version=f"meshnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, module in COMMANDS.items():
        if only is None or command == only:
            importlib.import_module(f"meshnode.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `meshnode probe ...` loads the probe command alone: an exec probe runs it every few seconds
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except MeshnodeError as exc:
        from meshnode.cli._logging import report_error
        from meshnode.config._reader import printable

        report_error(f"meshnode: {printable(str(exc))}")  # one line (JSON with MESHNODE_LOG_FORMAT=json)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
