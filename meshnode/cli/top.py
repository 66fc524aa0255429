"""``meshnode top URL...``: a live view of nodes, read from their Prometheus endpoints.

Each URL is a node's ``[telemetry] prometheus`` endpoint (``host:port`` is
enough: ``http://`` and ``/metrics`` are added). Per node: its name, SPIFFE
ID and how long its SVID has left; per direction (``in``: calls the node
served, ``out``: calls it made), method and peer SPIFFE ID: calls/s,
success rate, p50 and p99 latency, denials (PERMISSION_DENIED and
UNAUTHENTICATED) and the call count since the node started. Refreshes
every --interval (2 s), with rates over the last interval; the first frame
(and --once) counts from each node's start.

``--once`` prints one table and exits: 0 when every node was read, 1 when
one is unreachable or not a meshnode metrics endpoint (named in the table).
A URL that is not http(s) is an error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from meshnode.config.duration import DURATION_HELP, format_duration, parse_duration
from meshnode.errors import ConfigError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="live calls/s, success, latency and denials of nodes, from their /metrics",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("urls", nargs="+", metavar="URL", help="a node's metrics endpoint (http://HOST:PORT/metrics)")
    p.add_argument("--once", action="store_true", help="print one table and exit (for scripts)")
    p.add_argument("--interval", default="2s", metavar="DURATION", help=f"refresh interval ({DURATION_HELP})")
    p.add_argument("--timeout", default="5s", metavar="DURATION", help="how long to wait for each endpoint")
    p.set_defaults(func=run)


def _duration(option: str, text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(reason=f"{option} {text!r} {exc} (write {DURATION_HELP})", component="top", key=option,
                          value=text) from None
    if value <= 0:
        raise ConfigError(reason=f"{option} must be more than 0", component="top", key=option, value=text)
    return value


def run(args: argparse.Namespace) -> int:
    from meshnode.telemetry.topview import Scrape, ScrapeError, normalise_url, render, scrape

    interval = _duration("--interval", args.interval)
    timeout = _duration("--timeout", args.timeout)
    urls = [normalise_url(u) for u in args.urls]

    def one(url: str) -> Scrape | ScrapeError:
        try:
            return scrape(url, timeout)
        except ScrapeError as exc:
            return exc

    previous: dict[str, Scrape] = {}
    live = not args.once and sys.stdout.isatty()
    with ThreadPoolExecutor(max_workers=min(len(urls), 16)) as pool:
        while True:
            frame = list(pool.map(one, urls))
            window = f"over the last {format_duration(interval)}" if previous else "since each node started"
            text = render(frame, previous, window)
            if live:
                sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen, draw from the top
            sys.stdout.write(text)
            sys.stdout.flush()
            if args.once:
                return 1 if any(isinstance(f, ScrapeError) for f in frame) else 0
            previous = {f.url: f for f in frame if not isinstance(f, ScrapeError)}
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return 0
