"""JSON logs: with MESHNODE_LOG_FORMAT=json every line `meshnode run` writes is one JSON object, audit
records put their decision at the top level with the trace id of the call that logged them, and a bad
MESHNODE_LOG_LEVEL or format is an error. The library configures no logging."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshnode.credentials import channel_credentials
from meshnode.demo import EchoService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.node import Node
from meshnode.spiffeid import dns_name_for
from meshnode.telemetry.events import IDENTITY_ROTATED, identity_event
from meshnode.telemetry.jsonlog import JsonFormatter
from meshnode.testing import ManualSource, issue_snapshot
from tests.support.meshnode_run import ALPHA, BETA, NodeProcess
from tests.support.nodes import node_config

GAMMA = "spiffe://example.org/node/gamma"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def json_lines(text: str) -> list[dict[str, object]]:
    """Every non-empty line, each parsed as one JSON object (fails on any other line)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert {"time", "level", "logger", "message"} <= set(entry), line
            out.append(entry)
    return out


def test_every_line_of_meshnode_run_is_json_and_audit_records_carry_the_call_trace(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path,
        sections='audit = "all"\n[telemetry]\nexporter = "jsonl"\njsonl_path = "spans.jsonl"\n',
        env={"MESHNODE_LOG_FORMAT": "json"},
    )
    try:
        traceparent = (("traceparent", f"00-{TRACE_ID}-{PARENT}-01"),)
        with node.channel() as channel:
            demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), metadata=traceparent, timeout=10)
        gamma = channel_credentials(issue_snapshot(DevCA("example.org", state_dir=node.state_dir), GAMMA),
                                    "example.org")
        with grpc.secure_channel(f"127.0.0.1:{node.port}", gamma,
                                 options=[("grpc.ssl_target_name_override", dns_name_for(BETA))]) as channel:
            with pytest.raises(grpc.RpcError) as denied:
                demo_pb2_grpc.EchoStub(channel).Say(demo_pb2.SayRequest(text="hi"), timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        assert node.stop() == 0
    logged = json_lines(node.stderr())  # every line: json_lines fails on one that is not JSON
    json_lines(node.stdout_tail.decode())  # stdout after the ready line, too
    audit = [e for e in logged if e["logger"] == "meshnode.audit"]
    assert [(e["decision"], e["peer_id"], e["method"]) for e in audit] == [
        ("allow", ALPHA, "/meshnode.demo.v1.Echo/Say"),
        ("deny", GAMMA, "/meshnode.demo.v1.Echo/Say"),
    ]
    allowed, refused = audit
    assert allowed["trace_id"] == TRACE_ID  # the caller's trace, continued by the node's server span
    assert isinstance(allowed["span_id"], str) and len(allowed["span_id"]) == 16 and allowed["span_id"] != PARENT
    assert refused["trace_id"] != TRACE_ID and len(str(refused["trace_id"])) == 32  # a trace of its own
    assert allowed["rule"] and allowed["policy_version"] == 1 and allowed["dry_run"] is False
    assert any(e["logger"] == "meshnode.node" and "stopping" in str(e["message"]) for e in logged)


def test_the_ready_line_is_json_too(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nname = "beta"\nlisten = "127.0.0.1:0"\nlog_format = "json"\n'
        f'[identity]\nsource = "dev"\ntrust_domain = "example.org"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[authz]\nallow = ["{ALPHA}"]\n[telemetry]\nprometheus = "127.0.0.1:0"\n'
    )
    from tests.support.procs import Meshnode

    with Meshnode(["run", str(config)]) as node:
        ready = node.wait_line(r'"message":"meshnode: node beta ready on ')
        metrics = node.wait_line(r'"message":"meshnode: node beta metrics on http://')
        assert node.terminate() == 0
        out = node.output()
    assert ready and metrics
    entries = json_lines(out)
    assert {e["level"] for e in entries} <= {"DEBUG", "INFO", "WARNING"}
    assert any(e["logger"] == "meshnode" and "NOTE: identity from the in-process dev CA" in str(e["message"])
               for e in entries)


@pytest.mark.parametrize(("env", "key", "message"), [
    ({"MESHNODE_LOG_LEVEL": "loud"}, "",
     "meshnode: config: MESHNODE_LOG_LEVEL='loud' is not a log level; use one of DEBUG, INFO, WARNING, ERROR, "
     "CRITICAL"),
    ({"MESHNODE_LOG_FORMAT": "yaml"}, "",
     "meshnode: config: MESHNODE_LOG_FORMAT='yaml' is not a log format; use text or json"),
    ({}, 'log_format = "xml"\n', "'node.log_format' must be one of text, json; got 'xml'"),
])
def test_a_bad_log_level_or_format_is_one_line_and_exit_2(
    tmp_path: Path, env: dict[str, str], key: str, message: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nname = "beta"\n{key}[identity]\nsource = "dev"\n'
                      f'state_dir = "{tmp_path / "state"}"\n')
    run = subprocess.run([sys.executable, "-m", "meshnode.cli", "run", str(config)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env})
    assert run.returncode == 2
    assert run.stdout == ""
    [line] = run.stderr.splitlines()
    assert message in line


def test_the_formatter_adds_the_current_span_and_the_record_extras() -> None:
    formatter = JsonFormatter()
    logger = logging.getLogger("meshnode.test.jsonlog")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("call") as span:
            logger.info("inside %s", "a call")
            inside = json.loads(formatter.format(records[-1]))
        logger.info("outside")
        outside = json.loads(formatter.format(records[-1]))
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logger.exception("failed")
        failed = formatter.format(records[-1])
    finally:
        logger.removeHandler(handler)
    ctx = span.get_span_context()
    assert inside["message"] == "inside a call"
    assert (inside["trace_id"], inside["span_id"]) == (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    assert "trace_id" not in outside and outside["logger"] == "meshnode.test.jsonlog"
    assert "\n" not in failed and "ValueError: boom" in json.loads(failed)["exception"]


def test_identity_events_keep_their_fields_in_json() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("meshnode.identity")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        snapshot = issue_snapshot(DevCA("example.org"), BETA)
        identity_event(IDENTITY_ROTATED, snapshot)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    entry = json.loads(JsonFormatter().format(records[-1]))
    assert entry["meshnode.svid.serial"] == snapshot.serial
    assert entry["meshnode.local.spiffe_id"] == BETA


async def test_a_node_configures_no_logging() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ca = DevCA("example.org")
    async with Node(node_config("beta", allow=[ALPHA], extra={"telemetry": {"prometheus": "127.0.0.1:0"}}),
                    services=[EchoService()], source=ManualSource(ca, BETA)):
        pass
    assert (root.handlers, root.level) == (handlers, level)
