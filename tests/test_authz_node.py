"""Authorization inside a real node: [authz] allow, service allow lists, @only, production refusal."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from meshnode.boot import Boot, boot
from meshnode.config.node import node_config_from_dict
from meshnode.demo import EchoService, RelayService
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.ca import DevCA
from meshnode.errors import ConfigError, PolicyError
from meshnode.node import Node
from meshnode.node_policy import service_policy
from meshnode.pipeline import discover
from meshnode.service import only
from meshnode.spiffeid import dns_name_for
from meshnode.testing import ManualSource, issue_snapshot

SERVER = "spiffe://example.org/node/server"
ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
GAMMA = "spiffe://example.org/node/gamma"


class GuardedEcho(EchoService):
    allow = [ALPHA, BETA]

    @only(ALPHA)
    async def Say(self, request: demo_pb2.SayRequest, context: Any) -> demo_pb2.SayReply:
        return await super().Say(request, context)


def test_service_rules_are_named_after_the_class() -> None:
    policy = service_policy([found for s in (GuardedEcho(), RelayService()) for found in discover(s)[0]])
    assert [r.name for r in policy.rules] == [
        "GuardedEcho.allow",
        "GuardedEcho.allow (only these peers)",
        "GuardedEcho.Say @only",
    ]


async def test_class_allow_lists_and_method_narrowing_in_a_running_node() -> None:
    source = ManualSource(DevCA("example.org"), SERVER)
    config = node_config_from_dict(
        {
            "node": {"name": "server", "listen": "127.0.0.1:0", "shutdown_grace": 0.5},
            "identity": {"source": "dev", "trust_domain": "example.org"},
            "authz": {"allow": ["spiffe://example.org"]},  # node-wide: the whole trust domain
        },
        environ={},
    )
    async with Node(config, services=[GuardedEcho(), RelayService()], source=source) as node:
        roots = source.current().bundle_pem("example.org")
        results: dict[str, dict[str, str]] = {}
        for who in (ALPHA, BETA, GAMMA):
            me = issue_snapshot(source.ca, who)
            creds = grpc.ssl_channel_credentials(roots, me.key_pem, me.chain_pem)
            options = [("grpc.ssl_target_name_override", dns_name_for(SERVER))]
            async with grpc.aio.secure_channel(node.address, creds, options=options) as channel:
                echo = demo_pb2_grpc.EchoStub(channel)  # type: ignore[no-untyped-call]
                relay = demo_pb2_grpc.RelayStub(channel)  # type: ignore[no-untyped-call]
                results[who] = {
                    "Say": await outcome(echo.Say(demo_pb2.SayRequest(text="hi"))),
                    "SayStream": await outcome(echo.SayStream(demo_pb2.SayRequest(text="a b"))),
                    "Forward": await outcome(relay.Forward(demo_pb2.ForwardRequest(text="x"))),
                }
    assert results == {
        ALPHA: {"Say": "OK", "SayStream": "OK", "Forward": "OK"},
        BETA: {"Say": "PERMISSION_DENIED", "SayStream": "OK", "Forward": "OK"},  # @only(ALPHA) on Say
        GAMMA: {"Say": "PERMISSION_DENIED", "SayStream": "PERMISSION_DENIED", "Forward": "OK"},  # class list
    }


async def outcome(call: Any) -> str:
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    return "OK"


def booted(source: ManualSource, mode: str, authz: dict[str, Any], services: list[object] | None = None) -> Boot:
    config = node_config_from_dict(
        {
            "node": {"name": "server", "listen": "127.0.0.1:0", "mode": mode},
            "identity": {"source": "workload-api", "trust_domain": "example.org"},
            "authz": authz,
        },
        environ={},
    )
    return boot(config, services or [], source=source)


def test_production_refuses_a_policy_that_only_denies_and_staging_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ManualSource(DevCA("example.org"), SERVER)
    with contextlib.closing(booted(source, "production", {})) as b:
        refused = b.refusal()
        assert refused is not None and refused.name == "authorization policy is configured"
        failed = {c.name: c.detail for c in b.checks if not c.ok}
        problem = failed["policy can allow a call and leaves health open"]
        assert "allows no caller, so every call would be denied" in problem
        with pytest.raises(ConfigError, match="authorization policy is configured"):
            b.enforce()
    catch_all = tmp_path / "p.json"
    catch_all.write_text(
        json.dumps({"name": "p", "deny_rules": [{"name": "all-out"}], "allow_rules": [{"name": "in"}]})
    )
    with contextlib.closing(booted(source, "production", {"policy": str(catch_all)})) as b:
        with pytest.raises(PolicyError, match="deny rule 'all-out' matches every caller"):
            b.enforce()
    # staging boots like development and reports what production would refuse
    with contextlib.closing(booted(source, "staging", {"policy": str(catch_all)})) as b:
        with caplog.at_level("WARNING", logger="meshnode.boot"):
            b.enforce()
    assert "would refuse in production" in caplog.text and "all-out" in caplog.text
    with contextlib.closing(booted(source, "development", {}, [EchoService()])) as b:
        assert b.refusal() is None
        assert any("no caller is allowed" in w for w in b.warnings)
    with contextlib.closing(booted(source, "production", {"allow": [ALPHA]}, [GuardedEcho()])) as b:
        b.enforce()
        with b.authorizer() as prod:
            assert prod.explain(ALPHA, "/meshnode.demo.v1.Echo/Say").decision.allowed
            assert not prod.explain(GAMMA, "/meshnode.demo.v1.Echo/SayStream").decision.allowed


def test_production_refuses_a_reload_that_would_deny_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = ManualSource(DevCA("example.org"), SERVER)
    path = tmp_path / "p.json"
    good = {"name": "p", "allow_rules": [{"name": "alpha", "source": {"principals": [ALPHA]}}]}
    path.write_text(json.dumps(good))
    b = booted(source, "production", {"policy": str(path)})
    b.enforce()
    with contextlib.closing(b), b.authorizer() as authz:
        assert authz.explain(ALPHA, "/x.Y/Z").decision.allowed
        bad = {"name": "p", "deny_rules": [{"name": "all-out"}], "allow_rules": [{"name": "in"}]}
        path.write_text(json.dumps(bad))
        os.utime(path, (time.time() + 5, time.time() + 5))
        deadline = time.monotonic() + 5
        with caplog.at_level("ERROR", logger="meshnode.authz"):
            while "policy reload failed" not in caplog.text:
                assert time.monotonic() < deadline, "the bad reload was never reported"
                time.sleep(0.05)
        assert "every call would be denied" in caplog.text
        assert authz.explain(ALPHA, "/x.Y/Z").decision.allowed  # the last good policy stays in force
