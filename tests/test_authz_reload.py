"""Policy files reloaded while serving: versions, failures kept out, each new version live on the next call.

Tests that need to know a file was looked at call :meth:`PolicyFile.poll`
themselves (it is what the watcher thread calls) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from meshnode.authz import Authorizer, PolicyFile, Request, policy_from_allowlist, policy_source
from meshnode.devagent.ca import DevCA
from meshnode.errors import PolicyError
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import parse_spiffe_id
from tests.support.authz import HOUR, ClientCert, serve
from tests.support.wait import eventually, eventually_async

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"


def policy_text(*allowed: str, name: str = "live") -> str:
    rules = [{"name": f"allow-{i}", "source": {"principals": [p]}} for i, p in enumerate(allowed)]
    return json.dumps({"name": name, "allow_rules": rules}, indent=2)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        eventually(lambda: source.current().version == 2, "version 2 to load")
        assert allowed(source, BETA) and allowed(source, "spiffe://example.org/ops")
        write_atomically(path, policy_text(ALPHA, BETA))  # new inode, same content
        assert source.poll() is False  # looked at (by this call, or the thread just before it): no new version
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
        eventually(lambda: failures(reader) == 1, "the failure to be counted")
        [record] = [r for r in caplog.records if r.name == "meshnode.authz"]
        assert record.levelno == logging.ERROR
        message = record.getMessage()
        assert "keeping version 1" in message and f"{path}:3:17: allow_rules[0].sauce" in message
        assert source.current().version == 1 and allowed(source, ALPHA)
        for _ in range(3):  # polled again and again: one broken content is counted once
            assert source.poll() is False
        assert failures(reader) == 1
        path.unlink()
        eventually(lambda: failures(reader) == 2, "the second failure to be counted")
        assert "cannot read" in caplog.records[-1].getMessage()
        write_atomically(path, policy_text(BETA))
        eventually(lambda: source.current().version == 2, "version 2 to load")
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


async def test_rewrites_under_load_never_fail_an_allowed_call_and_the_next_call_sees_each_version(
    tmp_path: Path,
) -> None:
    ca = DevCA("example.org")
    alpha, beta = (ClientCert.of(ca.issue(who, HOUR)) for who in (ALPHA, BETA))
    path = tmp_path / "policy.json"
    path.write_text(policy_text(ALPHA, name="v-initial"))
    source = PolicyFile(path)  # the default interval, on its thread: what a node runs with

    def handler(request: bytes, context: Any) -> bytes:
        return b"ok"

    authorizer = Authorizer(source, audit="none")

    def register(server: grpc.aio.Server) -> None:
        authorizer.registrar(server).add_registered_method_handlers(
            "t.Probe", {"Unary": grpc.unary_unary_rpc_method_handler(handler)}
        )

    roots = certs_pem(ca.bundle)
    failed: list[str] = []
    calls = 0
    done = asyncio.Event()
    try:
        async with serve(ca, register) as s:
            async with s.channel(alpha, roots) as alpha_ch, s.channel(beta, roots) as beta_ch:
                alpha_call = alpha_ch.unary_unary("/t.Probe/Unary")
                beta_call = beta_ch.unary_unary("/t.Probe/Unary")

                async def load() -> None:
                    nonlocal calls
                    while not done.is_set():
                        try:
                            await alpha_call(b"")
                        except grpc.aio.AioRpcError as exc:
                            failed.append(f"{exc.code()}: {exc.details()}")
                        calls += 1

                async def load_ran() -> None:
                    since = calls
                    await eventually_async(lambda: calls > since, "allowed calls under this policy version")

                async def beta_allowed() -> bool:
                    try:
                        await beta_call(b"")
                        return True
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() is grpc.StatusCode.PERMISSION_DENIED
                        return False

                workers = [asyncio.create_task(load()) for _ in range(4)]
                try:
                    await load_ran()
                    for i in range(4):
                        want_beta = i % 2 == 0
                        text = policy_text(ALPHA, BETA, name=f"v{i}") if want_beta else policy_text(ALPHA, name=f"v{i}")
                        if i == 3:  # an in-place rewrite (truncate, then write) instead of a rename
                            path.write_text(text)
                        else:
                            write_atomically(path, text)
                        version = i + 2
                        await eventually_async(lambda: source.current().version >= version,  # noqa: B023
                                               f"rewrite {i} to load as version {version}")
                        assert source.current().version == version  # one version per rewrite
                        assert await beta_allowed() is want_beta  # the very next call decides by it
                        await load_ran()
                finally:
                    done.set()
                    await asyncio.gather(*workers)
    finally:
        source.close()
    assert failed == []
    assert source.current().policy.name == "v3"
