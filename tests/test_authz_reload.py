"""Policy files reloaded while serving: versions, failures kept out, changes live within a second."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshnode.authz import Authorizer, PolicyFile, Request, policy_from_allowlist, policy_source
from meshnode.errors import PolicyError
from meshnode.identity.devca import DevCA
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import parse_spiffe_id
from tests.support.authz import HOUR, ClientCert, serve

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


def policy_text(*allowed: str, name: str = "live") -> str:
    rules = [{"name": f"allow-{i}", "source": {"principals": [p]}} for i, p in enumerate(allowed)]
    return json.dumps({"name": name, "allow_rules": rules}, indent=2)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def failures(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "meshnode.authz.policy_reload_failures":
                    total += sum(int(getattr(p, "value", 0)) for p in m.data.data_points)
    return total


def allowed(source: PolicyFile, peer: str) -> bool:
    return source.current().policy.decide(Request(parse_spiffe_id(peer), "/p.S/M")).allowed


def test_invalid_file_at_start_refuses_with_the_location(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{\n  "name": "x",\n  "allow_rules": [\n    {"name": "a", "source": {"principals": ["spiffe://A/b"]}}\n]}')
    with pytest.raises(PolicyError, match=rf"{path}:4:45: allow_rules\[0\]\.source\.principals\[0\]: .*lowercase"):
        PolicyFile(path, start=False)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        PolicyFile(tmp_path / "missing.json", start=False)


def test_changes_load_as_new_versions_and_identical_content_does_not(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(policy_text(ALPHA))
    with PolicyFile(path, base=policy_from_allowlist(["spiffe://example.org/ops"]), interval=0.05) as source:
        assert source.current().version == 1 and not allowed(source, BETA)
        assert allowed(source, "spiffe://example.org/ops")  # the base policy stays merged in
        write_atomically(path, policy_text(ALPHA, BETA))
        wait_for(lambda: source.current().version == 2)
        assert allowed(source, BETA) and allowed(source, "spiffe://example.org/ops")
        write_atomically(path, policy_text(ALPHA, BETA))  # new inode, same content
        time.sleep(0.2)
        assert source.current().version == 2
    source.close()  # idempotent


def test_a_bad_reload_keeps_the_last_good_policy_logs_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="meshnode.authz")
    reader = InMemoryMetricReader()
    path = tmp_path / "policy.json"
    path.write_text(policy_text(ALPHA))
    with PolicyFile(path, interval=0.05, meter_provider=MeterProvider(metric_readers=[reader])) as source:
        write_atomically(path, '{"name": "live",\n "allow_rules": [\n  {"name": "a", "sauce": {}}]}')
        wait_for(lambda: failures(reader) == 1)
        [record] = [r for r in caplog.records if r.name == "meshnode.authz"]
        assert record.levelno == logging.ERROR
        message = record.getMessage()
        assert "keeping version 1" in message and f"{path}:3:17: allow_rules[0].sauce" in message
        assert source.current().version == 1 and allowed(source, ALPHA)
        time.sleep(0.2)
        assert failures(reader) == 1  # one broken content, counted once
        path.unlink()
        wait_for(lambda: failures(reader) == 2)
        assert "cannot read" in caplog.records[-1].getMessage()
        write_atomically(path, policy_text(BETA))
        wait_for(lambda: source.current().version == 2)
        assert allowed(source, BETA) and not allowed(source, ALPHA)


def test_policy_source_from_configuration(tmp_path: Path) -> None:
    static = policy_source(allow=["spiffe://example.org/a"], extra=[policy_from_allowlist([BETA], name="svc")])
    assert static.current().version == 1
    assert [r.name for r in static.current().policy.rules] == [
        "[authz] allow: spiffe://example.org/a",
        f"[authz] allow: {BETA}",
    ]
    path = tmp_path / "p.json"
    path.write_text(policy_text(ALPHA))
    with policy_source(allow=[BETA], policy_file=path) as watched:  # type: ignore[union-attr]
        assert allowed(watched, ALPHA) and allowed(watched, BETA)


async def test_rewrites_under_load_never_fail_an_allowed_call_and_apply_within_a_second(tmp_path: Path) -> None:
    ca = DevCA("example.org")
    alpha, beta = (ClientCert.of(ca.issue(who, HOUR)) for who in (ALPHA, BETA))
    path = tmp_path / "policy.json"
    path.write_text(policy_text(ALPHA, name="v-initial"))
    source = PolicyFile(path)  # the default interval: what a node runs with

    def handler(request: bytes, context: Any) -> bytes:
        return b"ok"

    authorizer = Authorizer(source, audit="none")

    def register(server: grpc.aio.Server) -> None:
        authorizer.registrar(server).add_registered_method_handlers(
            "t.Probe", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}
        )

    roots = certs_pem(ca.bundle)
    failed: list[str] = []
    done = asyncio.Event()
    try:
        async with serve(ca, register) as s:
            async with s.channel(alpha, roots) as alpha_ch, s.channel(beta, roots) as beta_ch:
                alpha_call = alpha_ch.unary_unary("/t.Probe/Unary")
                beta_call = beta_ch.unary_unary("/t.Probe/Unary")

                async def load() -> int:
                    n = 0
                    while not done.is_set():
                        try:
                            await alpha_call(b"")
                        except grpc.aio.AioRpcError as exc:
                            failed.append(f"{exc.code()}: {exc.details()}")
                        n += 1
                    return n

                async def beta_allowed() -> bool:
                    try:
                        await beta_call(b"")
                        return True
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() is grpc.StatusCode.PERMISSION_DENIED
                        return False

                workers = [asyncio.create_task(load()) for _ in range(4)]
                delays = []
                for i in range(4):
                    want_beta = i % 2 == 0
                    text = policy_text(ALPHA, BETA, name=f"v{i}") if want_beta else policy_text(ALPHA, name=f"v{i}")
                    if i == 3:  # an in-place rewrite (truncate, then write) instead of a rename
                        path.write_text(text)
                    else:
                        write_atomically(path, text)
                    written = time.monotonic()
                    while await beta_allowed() is not want_beta:
                        assert time.monotonic() - written < 1.0, f"rewrite {i} not live after 1 s"
                        await asyncio.sleep(0.01)
                    delays.append(time.monotonic() - written)
                done.set()
                calls = sum(await asyncio.gather(*workers))
    finally:
        source.close()
    print(f"\nreload under load: {calls} allowed calls, 0 failed; rewrite live after {[round(d, 2) for d in delays]} s")
    assert failed == []
    assert calls > 50
    assert source.current().version == 5 and max(delays) < 1.0
