"""``meshnode demo``: a local mesh of three nodes on the dev agent, narrated.

``meshnode demo call --workdir DIR`` sends one relay call through a mesh left
up by ``meshnode demo --keep-running``.

The work dir (``--workdir DIR``, new or empty; by default a new directory in
/tmp) is kept when the demo ends: its traces, logs and configs stay, so the
``meshnode trace show`` command the demo prints works afterwards. The
sockets and the dev CA's state are removed with the mesh.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from meshnode.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the local three-node mesh demo (what `make demo` runs)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verify", choices=("spiffe-id", "dns"), default="spiffe-id",
                   help="how nodes verify the servers they call (default: spiffe-id)")
    p.add_argument("--rotations", type=int, default=6, help="SVID rotations under load (one is a CA rotation)")
    p.add_argument("--keep-running", action="store_true", help="leave the mesh up and print commands to poke it")
    p.add_argument("--workdir", type=Path, metavar="DIR",
                   help="where the demo writes configs, logs and traces (new or empty; default: a new dir in /tmp)")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    call = actions.add_parser("call", help="one relay call through a running demo mesh")
    call.add_argument("--workdir", required=True, type=Path, help="the work dir `meshnode demo` printed")
    call.add_argument("--route", default="beta,gamma", help="peer names after alpha (default: beta,gamma)")
    call.add_argument("--verify", choices=("spiffe-id", "dns"), default="spiffe-id")
    call.set_defaults(func=run_call)


def run(args: argparse.Namespace) -> int:
    from meshnode.demo.story import run_demo

    if args.rotations < 2:
        raise ConfigError("demo: --rotations must be at least 2 (one of them rotates the CA)")
    workdir: Path | None = args.workdir
    if workdir is not None:
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise ConfigError(f"demo: --workdir {workdir} exists and is not an empty directory; name a new one")
        workdir = workdir.resolve()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the demo stops the processes it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return asyncio.run(run_demo(verify=args.verify, rotations=args.rotations, keep_running=args.keep_running,
                                workdir=workdir))


def run_call(args: argparse.Namespace) -> int:
    from meshnode.demo.story import call_once

    route = [r for r in args.route.split(",") if r]
    return asyncio.run(call_once(args.workdir, route, args.verify))
