"""The stderr relay of ``meshnode run``: a separate process between the node and the real stderr.

Run as a script (``python -I -S corelog_relay.py MODE``), never imported
by the node: it uses the standard library only, so it starts in a few
milliseconds without meshnode, grpc or site-packages. It reads the node's
stderr (its stdin), writes what should be seen to the real stderr (its
stderr) and reports counts to the node (its stdout), one line each::

    H <count> <reason>           TLS handshakes that failed with <reason> (an OpenSSL reason code)
    S <count> <source> <sample>  gRPC core lines from <source> (file.cc:line) held back; <sample> is the first

MODE ``summarise`` (GRPC_VERBOSITY and GRPC_TRACE unset) holds back gRPC
core's per-handshake "Handshake failed" lines and, for every other core
source location, the lines beyond :data:`LINES_PER_SOURCE` per window
(never a fatal ``F`` line); mode ``count`` (the user asked for core logs)
forwards every line and only counts. A line that is not a gRPC core line
is the continuation of the core record before it when it comes in the
same read (absl writes a record in one write), and shares its fate, unless
it looks like a crash report (:data:`ALWAYS_SHOWN`); any other (output of
child processes) is forwarded as it arrives. meshnode's own log does not
come this way at all (``sys.stderr`` writes to the real stderr).

Under a flood the lines come one per handshake; after a small read the
relay waits 5 ms so that the next read takes many at once (a tenth of
the CPU of reading them one by one).

Why a process and not a thread in the node: it outlives a node that
crashes, so gRPC's last words before an abort still reach the real stderr
(a pipe read by a thread of the dying process loses them); and it never
waits for the node's GIL, so a flood of core lines cannot fill the pipe
and stall gRPC's threads. It exits on end of input, when every holder of
the node's stderr has exited or closed it; it ignores SIGINT, SIGTERM and
SIGHUP, which are for the node.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

#: gRPC core (absl) log line: severity, date, time, thread, source location, message
CORE_LINE = re.compile(rb"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([\w.+-]{1,80}:\d{1,6})\] ")
HANDSHAKE_FAILED = re.compile(rb"\] Handshake failed with error (\w{1,40})")
OPENSSL_REASON = re.compile(rb"OPENSSL_internal:([A-Z0-9_]{1,64})")
#: lines never taken for the continuation of a held-back record: a crash must always be seen
ALWAYS_SHOWN = re.compile(rb"^(Fatal Python error|Traceback|Segmentation fault|Aborted|terminate called|\*\*\*|"
                          rb"Check failed|Current thread|Thread 0x)")
#: core lines forwarded per source location and window before the rest are held back and counted
LINES_PER_SOURCE = 10
WINDOW = 10.0  # seconds
REPORT_EVERY = 0.5  # seconds between reports to the node
MAX_SOURCES = 256  # distinct source locations tracked per window; the rest share one entry
_LONGEST_LINE = 1 << 20
_COALESCE = 0.005  # seconds to wait after a small read
_COALESCE_BELOW = 1 << 14
_SAMPLE = 240  # characters of a held-back line sent as its sample
_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


class Relay:
    def __init__(self, mode: str, out: int, report: int) -> None:
        self.summarise = mode == "summarise"
        self.out = out
        self.report_fd: int | None = report
        self.failed: dict[str, int] = {}
        self.held: dict[str, int] = {}  # source -> lines held back since the last report
        self.samples: dict[str, str] = {}  # source -> the first line held back
        self.forwarded: dict[str, int] = {}  # per source, this window
        self.window_start = time.monotonic()
        # whether the last core record is forwarded: a line that is not a core line and comes in the
        # same read as a core record is that record's continuation (absl writes a record in one write)
        self.record_shown = True

    def line(self, raw: bytes) -> None:
        core = CORE_LINE.match(raw)
        if core is None:  # a continuation of the last core record, or not from gRPC core at all
            if self.record_shown or ALWAYS_SHOWN.match(raw):
                self.write(raw)
            return
        failed = HANDSHAKE_FAILED.search(raw, core.end() - 2)
        if failed is not None:
            reason = OPENSSL_REASON.search(raw)
            key = (reason or failed).group(1).decode("ascii")
            self.failed[key] = self.failed.get(key, 0) + 1
            self.record_shown = not self.summarise
        else:  # a fatal line (F...) is always shown: the process is about to abort
            self.record_shown = raw.startswith(b"F") or self.admit(core.group(1).decode("ascii"), raw)
        if self.record_shown:
            self.write(raw)

    def admit(self, source: str, raw: bytes) -> bool:
        if not self.summarise:
            return True
        if time.monotonic() - self.window_start >= WINDOW:
            self.forwarded.clear()
            self.window_start = time.monotonic()
        if source not in self.forwarded and len(self.forwarded) >= MAX_SOURCES:
            source = "other"
        shown = self.forwarded.get(source, 0)
        if shown < LINES_PER_SOURCE:
            self.forwarded[source] = shown + 1
            return True
        if source not in self.held:
            self.held[source] = 0
            self.samples[source] = _PRINTABLE.sub(b"?", raw[:_SAMPLE].rstrip()).decode("ascii")
        self.held[source] += 1
        return False

    def write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.out, data):]
        except OSError:
            pass  # the real stderr is gone: keep draining the node's, so it never blocks on a full pipe

    def send_report(self) -> None:
        lines = [f"H {n} {reason}\n" for reason, n in self.failed.items()]
        lines += [f"S {n} {source} {self.samples[source]}\n" for source, n in self.held.items()]
        self.failed.clear()
        self.held.clear()
        self.samples.clear()
        if not lines or self.report_fd is None:
            return
        try:
            os.write(self.report_fd, "".join(lines).encode("ascii"))
        except OSError:  # the node stopped listening: keep relaying stderr anyway
            self.report_fd = None


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    mode = argv[1] if len(argv) > 1 else "summarise"
    relay = Relay(mode, out=2, report=1)
    pending = b""
    last_report = time.monotonic()
    while True:
        ready, _, _ = select.select([0], [], [], REPORT_EVERY)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            pending += chunk
            relay.record_shown = True  # continuations come in the same read as their record
            *lines, pending = pending.split(b"\n")
            if len(pending) > _LONGEST_LINE:  # no newline in sight: pass it on in pieces
                lines.append(pending)
                pending = b""
            for raw in lines:
                relay.line(raw + b"\n")
            if len(chunk) < _COALESCE_BELOW:  # a trickle (a line per handshake): let a few gather, fewer wake-ups
                time.sleep(_COALESCE)
        if time.monotonic() - last_report >= REPORT_EVERY:
            relay.send_report()
            last_report = time.monotonic()
    if pending:
        relay.line(pending)
    relay.send_report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
