"""``meshnode bench``: what meshnode costs next to bare grpcio, measured on this machine.

Runs bare grpcio (insecure, and mTLS with static credentials: the
baseline B), the hand-written limit (G: an allowlist on
peer_identities() in the servicer; K: the same keyed on the caller's
certificate) side by side with meshnode (C: a Node; N: `meshnode run`
with the demo service; D: C plus tracing; M: C plus metrics; E/F, E3/F3:
meshnode client channels; J: E with JWT-SVIDs required), interleaved over
many rounds, with servers and clients in separate processes pinned to
separate CPUs, on unary calls, short and long server streams; then
handshake rates with static vs. dynamic server credentials, and SVID and
CA rotations under load. Writes bench.json (every number) and bench.md
(the tables) to --out and prints the markdown.

--quick is the smoke run for CI (about a minute); its numbers are too
few to compare configurations.

Variants P and Q (not run by default) are the policy-scale scenario: a node
whose policy file has 10,001 allow rules, and the same plus one header rule
(--variants B,C,P,Q). To compare that scenario across source trees (e.g.
before and after a change) in one interleaved run:
python -m meshnode.bench.header_rule --before PATH.

--scale runs the scale scenarios instead (meshnode.bench.scale): decision
cost vs policy size, memory and start-up vs configured peers, server cost
vs concurrent connections, rotation cost at scale, process start-up; it
writes scale.json and scale.md. --scale --quick is its smoke run.

The benchmark is not part of the installed package (the wheel leaves
meshnode.bench out): run it from a source checkout (``make bench``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from meshnode.config.duration import duration_argument
from meshnode.errors import MeshnodeError

if TYPE_CHECKING:
    from meshnode.bench.plan import BenchSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmark meshnode against bare grpcio", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few short rounds (CI)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 12; quick 2)")
    p.add_argument("--duration", type=duration_argument,
                   help="seconds per variant and workload (default 0.6; quick 0.25)")
    p.add_argument("--callers", type=int, help="concurrent callers of the 'many callers' workloads (default 16)")
    p.add_argument("--rotations", type=int, help="rotations under load (default 24; quick 4)")
    p.add_argument("--variants", help="comma-separated subset of the variants above "
                   "(A, B, G, K, C, N, D, M, E, F, E3, F3, J, P, Q; B is required)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to separate CPUs")
    p.add_argument("--scale", action="store_true",
                   help="how costs grow: policy size, peers, connections, rotation at scale, start-up")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench.json, bench.md, logs")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    try:
        from meshnode.bench.plan import BenchSettings
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("meshnode.bench"):
            raise
        raise MeshnodeError(
            "bench: the benchmark is not in the installed package (the wheel leaves meshnode.bench out); "
            "run it from a source checkout: make bench"
        ) from None
    settings = BenchSettings.quick_run(args.out) if args.quick else BenchSettings(out=args.out)
    changes: dict[str, object] = {}
    for name in ("rounds", "duration", "callers", "rotations"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.rotations is not None:
        changes["ca_rotations"] = min(settings.ca_rotations, args.rotations)
    if args.variants:
        changes["variants"] = tuple(v.strip().upper() for v in args.variants.split(",") if v.strip())
    if args.no_pin:
        changes["pin"] = False
    return settings.replace(**changes) if changes else settings


def _scale(args: argparse.Namespace) -> int:
    """``--scale``: the scale scenarios (meshnode.bench.scale), scale.json and scale.md."""
    try:
        from meshnode.bench.scale import ScaleSettings, run_scale
        from meshnode.bench.scale_report import write_scale_report
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("meshnode.bench"):
            raise
        raise MeshnodeError("bench: the benchmark is not in the installed package; run it from a source "
                            "checkout: meshnode bench --scale") from None
    settings = ScaleSettings.quick_run(args.out) if args.quick else ScaleSettings(args.out)
    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"bench --scale: [{time.monotonic() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    result = run_scale(settings, progress)
    command = "meshnode " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    json_path, md_path, text = write_scale_report(result, settings.out, command)
    print(text)
    print(f"bench --scale: wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.scale:
        return _scale(args)
    settings = settings_from(args)
    from meshnode.bench.report import write_report
    from meshnode.bench.runner import run_bench

    began = time.monotonic()

    def progress(message: str) -> None:
        print(f"bench: [{time.monotonic() - began:5.1f}s] {message}", file=sys.stderr, flush=True)

    result = run_bench(settings, progress)
    command = "meshnode " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    json_path, md_path, text = write_report(result, settings.out, command)
    print(text)
    print(f"bench: wrote {json_path} and {md_path}", file=sys.stderr)
    return 0
