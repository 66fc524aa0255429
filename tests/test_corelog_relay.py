"""The stderr relay of `meshnode run` (a real process fed real gRPC core lines) and the summary counter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.logsummary import EventSummary
from meshnode.telemetry import corelog

# -- the relay, as the process it is ------------------------------------------------------------------

CORE = "I1130 15:52:43.689139    8983 {source}] {message}\n"
FAILED = CORE.format(
    source="ssl_transport_security.cc:2563",
    message="Handshake failed with error SSL_ERROR_SSL: error:100000c0:SSL routines:OPENSSL_internal:"
    "PEER_DID_NOT_RETURN_A_CERTIFICATE: Invalid certificate verification context",
)


def relay(mode: str, text: str) -> tuple[str, str]:
    """Run the relay on ``text``; (what it forwarded to stderr, what it reported to the node)."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(corelog.__file__).with_name("corelog_relay.py")), mode],
        input=text.encode(), capture_output=True, timeout=30, check=True,
    )
    return done.stderr.decode(), done.stdout.decode()


def reported(report: str) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for line in report.splitlines():
        kind, count, key = line.split(" ", 3)[:3]
        out[(kind, key)] = out.get((kind, key), 0) + int(count)
    return out


def test_relay_counts_failed_handshakes_and_holds_back_repeated_core_lines() -> None:
    limit = 10
    noisy = CORE.format(source="posix_engine_listener.cc:164", message="File descriptor limit reached. Retrying.")
    other = CORE.format(source="chttp2_transport.cc:1234", message="something else")
    text = (
        "meshnode: a line that is not from gRPC core\n"
        + FAILED * 50
        + noisy * 25
        + other
        + "=== Source Location Trace: ===\n"  # same read: the continuation of the record above
        + "Fatal Python error: is always shown\n"
    )
    forwarded, report = relay("summarise", text)
    assert "Handshake failed" not in forwarded
    assert forwarded.count("File descriptor limit reached") == limit
    assert "something else" in forwarded and "=== Source Location Trace: ===" in forwarded
    assert forwarded.startswith("meshnode: a line that is not from gRPC core\n")
    assert "Fatal Python error: is always shown" in forwarded
    assert reported(report) == {
        ("H", "PEER_DID_NOT_RETURN_A_CERTIFICATE"): 50,
        ("S", "posix_engine_listener.cc:164"): 25 - limit,
    }


def test_relay_in_count_mode_forwards_everything() -> None:
    forwarded, report = relay("count", FAILED * 30)
    assert forwarded == FAILED * 30
    assert reported(report) == {("H", "PEER_DID_NOT_RETURN_A_CERTIFICATE"): 30}


def test_relay_drops_the_continuation_of_a_held_back_record_only() -> None:
    record = CORE.format(source="x.cc:1", message="first line") + "  continued\n"
    forwarded, _ = relay("summarise", record * 12)
    assert forwarded.count("first line") == 10 and forwarded.count("  continued") == 10


def test_relay_never_takes_a_crash_report_for_a_continuation() -> None:
    crash = "Fatal Python error: Aborted\n\nCurrent thread 0x00007f (most recent call first):\n"
    forwarded, _ = relay("summarise", FAILED * 3 + crash)
    assert "Fatal Python error: Aborted" in forwarded and "Current thread 0x00007f" in forwarded


# -- one summary per interval -------------------------------------------------------------------------


def test_event_summary_reports_at_once_then_at_most_once_per_interval() -> None:
    now = [100.0]
    summary = EventSummary(10.0, clock=lambda: now[0])
    assert summary.take() is None
    summary.add("HTTP_REQUEST")
    first = summary.take()
    assert first is not None and (first.total, first.by_key) == (1, (("HTTP_REQUEST", 1),))
    for _ in range(500):
        summary.add("HTTP_REQUEST")
    summary.add("WRONG_VERSION_NUMBER", 3)
    now[0] += 9.9
    assert summary.take() is None  # too soon
    now[0] += 0.1
    second = summary.take()
    assert second is not None and second.total == 503
    assert second.top() == "HTTP_REQUEST x500, WRONG_VERSION_NUMBER x3"
    assert second.seconds == pytest.approx(10.0)
    summary.add("late")
    assert summary.take() is None and summary.take(force=True) is not None


CAPTURE_THEN_LOSE_THE_RELAY = """
import os, signal, sys, time, logging
logging.basicConfig(level=logging.INFO)
from meshnode.telemetry.corelog import CoreLogCapture
capture = CoreLogCapture(environ={}).start()
assert capture.active
relays = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
os.kill(int(relays[0]), signal.SIGKILL)
deadline = time.monotonic() + 60
while capture.active and time.monotonic() < deadline:
    time.sleep(0.05)
os.write(2, b"straight to stderr\\n")
capture.close()
"""


def test_when_the_relay_dies_stderr_goes_back_to_the_real_one_with_a_warning() -> None:
    done = subprocess.run([sys.executable, "-c", CAPTURE_THEN_LOSE_THE_RELAY], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "the stderr relay exited; gRPC core logs go straight to stderr again" in done.stderr
    assert "straight to stderr" in done.stderr


# -- the relay's logic, in this process (the process above runs with -I -S, out of coverage.py's reach) -----


def relay_in_process(mode: str) -> tuple[object, int, int]:
    from meshnode.telemetry.corelog_relay import Relay

    out_r, out_w = os.pipe()
    rep_r, rep_w = os.pipe()
    return Relay(mode, out=out_w, report=rep_w), out_r, rep_r


def drain(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_relay_logic_holds_back_failed_handshakes_and_reports_them_with_samples() -> None:
    from meshnode.telemetry import corelog_relay

    relay, out, rep = relay_in_process("summarise")
    noisy = CORE.format(source="tcp_server.cc:7", message="accept failed \x01")
    for _ in range(3):
        relay.line(FAILED.encode())  # type: ignore[attr-defined]
    for _ in range(corelog_relay.LINES_PER_SOURCE + 2):
        relay.line(noisy.encode())  # type: ignore[attr-defined]
    relay.line(b"   a continuation of the held-back record\n")  # type: ignore[attr-defined]
    relay.line(b"Traceback (most recent call last): always shown\n")  # type: ignore[attr-defined]
    relay.send_report()  # type: ignore[attr-defined]
    forwarded, report = drain(out), drain(rep)
    assert forwarded.count("accept failed") == corelog_relay.LINES_PER_SOURCE
    assert "a continuation" not in forwarded and "Traceback (most recent call last)" in forwarded
    assert "H 3 PEER_DID_NOT_RETURN_A_CERTIFICATE" in report
    assert "S 2 tcp_server.cc:7 " in report and "accept failed ?" in report  # control characters masked
    relay.send_report()  # type: ignore[attr-defined]
    assert drain(rep) == ""  # nothing new: no empty report


def test_relay_logic_shares_one_entry_beyond_max_sources_and_survives_closed_pipes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meshnode.telemetry import corelog_relay

    monkeypatch.setattr(corelog_relay, "MAX_SOURCES", 2)
    monkeypatch.setattr(corelog_relay, "LINES_PER_SOURCE", 1)
    relay, out, rep = relay_in_process("summarise")
    for n in range(5):
        line = CORE.format(source=f"file{n}.cc:1", message="x").encode()
        relay.line(line)  # type: ignore[attr-defined]
        relay.line(line)  # type: ignore[attr-defined]
    relay.send_report()  # type: ignore[attr-defined]
    report = drain(rep)
    assert "S 1 file0.cc:1" in report and "S 1 file1.cc:1" in report
    assert "S 5 other" in report  # sources beyond the cap count together
    os.close(out)
    os.close(rep)
    relay.line(FAILED.encode())  # type: ignore[attr-defined]
    relay.write(b"the real stderr is gone\n")  # type: ignore[attr-defined]
    relay.send_report()  # the node stopped listening: no exception, no more reports
    assert relay.report_fd is None  # type: ignore[attr-defined]


def test_relay_logic_in_count_mode_forwards_every_core_line() -> None:
    relay, out, rep = relay_in_process("count")
    for _ in range(30):
        relay.line(FAILED.encode())  # type: ignore[attr-defined]
    relay.send_report()  # type: ignore[attr-defined]
    assert drain(out).count("Handshake failed") == 30
    assert drain(rep).strip() == "H 30 PEER_DID_NOT_RETURN_A_CERTIFICATE"
