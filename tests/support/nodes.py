"""Helpers shared by the node tests: configs built in code, sources from a test CA."""

from __future__ import annotations

from typing import Any

from meshnode.config.node import NodeConfig, node_config_from_dict


def node_config(
    name: str,
    *,
    port: int = 0,
    allow: list[str] | None = None,
    peers: dict[str, dict[str, Any]] | None = None,
    mode: str = "development",
    identity: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"name": name, "listen": f"127.0.0.1:{port}", "mode": mode, "shutdown_grace": 1.0},
        "identity": identity or {"source": "dev", "trust_domain": "example.org"},
        "authz": {"allow": allow or []},
        "peers": peers or {},
    }
    for key, value in (extra or {}).items():
        data.setdefault(key, {}).update(value)
    return node_config_from_dict(data, environ={})


def peer(port: int, spiffe_id: str, verify: str = "dns", **more: Any) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}", "spiffe_id": spiffe_id, "verify": verify, **more}
