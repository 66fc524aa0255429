"""gRPC core's stderr in ``meshnode run``: per-connection lines counted and summarised, not printed.

gRPC's C core logs through absl straight to file descriptor 2; Python
cannot hook it, and its level (``GRPC_VERBOSITY``) is read once, when grpc
is imported, which ``import meshnode`` already did. Left alone, every
failed TLS handshake prints one line (``ssl_transport_security.cc ...
Handshake failed with error SSL_ERROR_SSL: ... HTTP_REQUEST``): 60,653
non-TLS connections in 10 s wrote 12.4 MB. The line carries the reason but
not the peer address, and it is the only signal gRPC gives of a failed
handshake.

:class:`CoreLogCapture` points descriptor 2 at a pipe read by a relay
process (:mod:`meshnode.telemetry.corelog_relay`) and reads its reports on
a thread: each failed handshake is counted in
``meshnode.server.handshake_failures`` (by reason), and the log gets one
summary line per :data:`SUMMARY_INTERVAL`. Repeated lines of any other
core source location are held back past a few per window and summarised
too. Nothing else changes: meshnode's own log and any traceback pass
through as they come. When ``GRPC_VERBOSITY`` or ``GRPC_TRACE`` is set the
user asked for core logs: every line is forwarded and only counted.

If the relay cannot start or dies, stderr goes back to the real one (with
one warning) and the node runs on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from meshnode.logsummary import EventSummary, Summary
from meshnode.telemetry.instruments import instruments

__all__ = ["SUMMARY_INTERVAL", "USER_LOG_ENV", "CoreLogCapture"]

log = logging.getLogger("meshnode.server")

#: seconds between two summary lines of the same kind
SUMMARY_INTERVAL = 10.0
#: environment variables that ask gRPC core for logs: when one is set, every core line is shown
USER_LOG_ENV = ("GRPC_VERBOSITY", "GRPC_TRACE")
_RELAY = Path(__file__).with_name("corelog_relay.py")
_PIPE_SIZE = 1 << 20  # room for bursts while the relay catches up
_TICK = 1.0


class CoreLogCapture:
    """Owns the relay process and the redirection of descriptor 2; ``close()`` undoes both."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.mode = "count" if any(env.get(name) for name in USER_LOG_ENV) else "summarise"
        self.handshakes = EventSummary(SUMMARY_INTERVAL)
        self.held = EventSummary(SUMMARY_INTERVAL)
        self._samples: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._saved_stderr: int | None = None
        self._reports: int | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> CoreLogCapture:
        """Redirect descriptor 2 through the relay; on any failure, warn and leave stderr alone."""
        try:
            self._start()
        except OSError as exc:
            self._restore()
            log.warning("server: cannot start the stderr relay (%s): gRPC core logs every failed handshake", exc)
        return self

    def _start(self) -> None:
        read_end, write_end = os.pipe()
        reports_read, reports_write = os.pipe()
        try:
            with contextlib.suppress(OSError, AttributeError):
                import fcntl

                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(_RELAY), self.mode],
                stdin=read_end, stdout=reports_write, close_fds=True,
            )
            sys.stderr.flush()
            real = os.dup(2)
            # Python's own stderr (meshnode's log, tracebacks) keeps writing to the real stderr, never
            # through the relay: only what writes to descriptor 2 directly (gRPC core) goes through it.
            sys.stderr = open(  # stays open for the life of the process: logging handlers hold it
                real, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False
            )
            self._saved_stderr = real
            os.dup2(write_end, 2)
        except BaseException:
            os.close(reports_read)
            raise
        finally:
            for fd in (read_end, write_end, reports_write):
                os.close(fd)
        self._reports = reports_read
        self._thread = threading.Thread(target=self._run, name="meshnode-corelog", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Give descriptor 2 back to the real stderr, let the relay drain and exit, log what is left."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._restore()
        if self._thread is not None:
            self._thread.join(timeout)  # ends when the relay has sent its last report and exited
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)

    def __enter__(self) -> CoreLogCapture:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _restore(self) -> None:
        """Descriptor 2 is the real stderr again (the pipe's last write end here closes); idempotent.

        The descriptor Python's stderr was moved to stays open: logging handlers hold it.
        """
        with self._lock:
            saved, self._saved_stderr = self._saved_stderr, None
        if saved is not None:
            os.dup2(saved, 2)

    # -- the reader thread ---------------------------------------------------------------------

    def _run(self) -> None:
        assert self._reports is not None
        pending = b""
        try:
            while True:
                ready, _, _ = select.select([self._reports], [], [], _TICK)
                if ready:
                    chunk = os.read(self._reports, 1 << 16)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self._report(line.decode("ascii", "replace"))
                self._log_summaries(force=False)
        finally:
            os.close(self._reports)
            self._log_summaries(force=True)
            if not self._closing:
                self._restore()
                log.warning("server: the stderr relay exited; gRPC core logs go straight to stderr again")

    def _report(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        count_text, _, rest = rest.partition(" ")
        if not (count_text.isascii() and count_text.isdigit()):  # isdigit() alone accepts '²'
            return
        count = int(count_text)
        if kind == "H" and rest:
            instruments().handshake_failures(rest, count)
            self.handshakes.add(rest, count)
        elif kind == "S" and rest:
            source, _, sample = rest.partition(" ")
            self._samples.setdefault(source, sample)
            self.held.add(source, count)

    def _log_summaries(self, *, force: bool) -> None:
        failed = self.handshakes.take(force=force)
        if failed is not None:
            log.warning(
                "server: %d TLS handshake%s failed in the last %.1f s (%s): callers without TLS, without a client "
                "certificate, or with one this node does not trust; gRPC does not report their addresses",
                failed.total, "" if failed.total == 1 else "s", failed.seconds, failed.top(),
            )
        held = self.held.take(force=force)
        if held is not None:
            self._log_held(held)

    def _log_held(self, held: Summary) -> None:
        first = held.by_key[0][0]
        log.warning("server: held back %d repeated gRPC core log line%s in the last %.1f s (%s); the first from %s: %s",
                    held.total, "" if held.total == 1 else "s", held.seconds, held.top(), first,
                    self._samples.get(first, "?"))
        self._samples.clear()

