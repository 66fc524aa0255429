"""Where a server's CPU goes under the bench load: ``python -m meshnode.bench.profile --variant C``.

Starts one bench server variant and one bench client (the same processes
``meshnode bench`` runs, pinned to separate CPUs), drives ``--callers``
unary callers for ``--seconds``, and samples the server with py-spy
(``pip install py-spy``; not a meshnode dependency) in its
``--format raw`` (collapsed stacks) output. Prints the share of samples
spent in each meshnode function and module (inclusive: a function's share
counts what it calls) and in the handful of places a call's time goes
(grpc's Cython call path, protobuf, OpenTelemetry, meshnode's per-call
hook), so two variants can be compared one after the other.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from meshnode.bench.pki import BenchPKI
from meshnode.bench.protocol import Child

__all__ = ["main", "summarize"]

#: a frame's category: the first pattern found in the frame text (py-spy prints "function (file:line)")
_CATEGORIES = (
    ("meshnode per-call hook (pipeline.admit + Authorizer.check)", ("meshnode/pipeline.py", "meshnode/authz/")),
    ("meshnode (other)", ("meshnode/",)),
    ("OpenTelemetry", ("opentelemetry/",)),
    ("protobuf", ("google/protobuf",)),
    ("grpc (Cython/Python call path)", ("grpc/", "grpc._cython", "cygrpc")),
    ("asyncio event loop", ("asyncio/",)),
)


def summarize(stacks: dict[str, int], top: int = 25) -> str:
    """A text report of collapsed stacks (``frame;frame;... count``)."""
    total = sum(stacks.values()) or 1
    inclusive: Counter[str] = Counter()
    category: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [_function(frame) for frame in stack.split(";")]
        seen: set[str] = set()
        for frame in frames:
            if "meshnode/" in frame and frame not in seen:
                seen.add(frame)
                inclusive[frame] += count
        for frame in reversed(frames):  # the innermost frame that names a category
            name = next((n for n, pats in _CATEGORIES if any(p in frame for p in pats)), None)
            if name is not None:
                category[name] += count
                break
        else:
            category["other (native, idle threads)"] += count
    lines = [f"{sum(stacks.values())} samples", "", "innermost category of each sample:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in category.most_common()]
    lines += ["", f"meshnode frames, inclusive (top {top}):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: samples add up per function, not per line."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def _read_raw(path: Path) -> dict[str, int]:
    stacks: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="C", help="server variant (meshnode.bench.server), default C")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="server-streaming calls instead of unary")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/profile"))
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("profile: py-spy is not installed; run: pip install py-spy", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mnp-", dir="/tmp"))
    try:
        BenchPKI(work)
        common = ["--state-dir", str(work)]
        with Child("server", [sys.executable, "-m", "meshnode.bench.server", "--variant", args.variant, *common,
                              "--cpu", "0"], args.out / "server.log") as server:
            port = server.receive(90.0)["ports"]["main"]
            with Child("client", [sys.executable, "-m", "meshnode.bench.client", *common, "--cpu", "1",
                                  f"--target=X=mtls@127.0.0.1:{port}"], args.out / "client.log") as client:
                client.receive(90.0)
                raw = args.out / f"{args.variant}.raw"
                spy = [py_spy, "record", "--pid", str(server.pid), "--rate", str(args.rate), "--format", "raw",
                       "--duration", str(int(args.seconds)), "--output", str(raw), "--nonblocking"]
                if args.native:
                    spy.append("--native")
                unary, stream = (0, args.callers) if args.stream else (args.callers, 0)
                load: dict[str, object] = {}
                thread = threading.Thread(target=lambda: load.update(client.request(
                    {"cmd": "load", "target": "X", "unary": unary, "stream": stream,
                     "duration": args.seconds + 2.0}, timeout=args.seconds + 60.0)))
                thread.start()
                subprocess.run(spy, check=True, stdout=subprocess.DEVNULL)
                thread.join()
        report = summarize(_read_raw(raw))
        print(f"variant {args.variant}: {load.get('calls')} calls, {load.get('errors')} errors\n{report}")
        (args.out / f"{args.variant}.txt").write_text(report + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
