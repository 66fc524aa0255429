"""``meshnode trace show|list FILE.jsonl...``: read traces without a backend.

The files are what ``[telemetry] exporter = "jsonl"`` (or
``OTEL_TRACES_EXPORTER=jsonl``) writes; give the files of every node that
took part and the spans are merged. ``show`` draws one trace (``--trace-id``,
a unique prefix is enough; by default the most recent trace, the one whose
first span started last); ``list`` lists the traces, most recent first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import TYPE_CHECKING

from meshnode.errors import ConfigError, MeshnodeError

if TYPE_CHECKING:
    from meshnode.telemetry.traces import Trace


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "trace",
        help="show traces from JSON-lines span files as a terminal waterfall",
        description="Read the JSON-lines span files meshnode nodes export ([telemetry] exporter = "
        '"jsonl") and show traces without a tracing backend.',
    )
    actions = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="draw one trace as a waterfall",
        description="Draw one trace: one line per span, indented by parent, with node, peer SPIFFE ID, "
        "status, duration and a bar on the trace timeline. Without --trace-id, the most recent trace.",
    )
    show.add_argument("files", nargs="+", metavar="FILE.jsonl", help="span files (one per node, or shared)")
    show.add_argument("--trace-id", help="the trace to draw (32 hex digits, or a unique prefix)")
    show.add_argument("--width", type=_width, help="output width (default: the terminal's)")
    show.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    show.set_defaults(func=run_show)
    listing = actions.add_parser("list", help="list the traces in the files, most recent first")
    listing.add_argument("files", nargs="+", metavar="FILE.jsonl")
    listing.set_defaults(func=run_list)


def _width(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 60:
        raise argparse.ArgumentTypeError("must be at least 60")
    return value


def _load(files: list[str]) -> list[Trace]:
    from meshnode.telemetry.jsonl import read_spans
    from meshnode.telemetry.traces import group_traces

    try:
        result = read_spans(files)
    except OSError as exc:
        raise ConfigError(f"trace: cannot read {exc.filename}: {exc.strerror}") from exc
    if result.bad_lines:
        print(f"meshnode: trace: skipped {result.bad_lines} line(s) that are not spans", file=sys.stderr)
    if not result.spans:
        raise MeshnodeError(
            f"trace: no spans in {', '.join(files)}; is it a span file a node wrote with the jsonl exporter?"
        )
    return group_traces(result.spans)


def run_show(args: argparse.Namespace) -> int:
    from meshnode.telemetry.traces import pick_trace
    from meshnode.telemetry.waterfall import render_trace

    traces = _load(args.files)
    trace = pick_trace(traces, args.trace_id)
    color = not args.no_color and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    sys.stdout.write(render_trace(trace, width=width, color=color, ascii_only=not _can_draw()))
    if args.trace_id is None and len(traces) > 1:
        print(f"(the most recent of {len(traces)} traces; 'meshnode trace list' shows them all)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from meshnode.telemetry.waterfall import render_list

    sys.stdout.write(render_list(_load(args.files)))
    return 0


def _can_draw() -> bool:
    try:
        "█├─└│…".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True
