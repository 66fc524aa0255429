"""An independent gRPC client: @grpc/grpc-js on Node.js (``tests/support/grpc_js/echo_client.js``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

__all__ = ["ECHO_CLIENT", "call_echo", "grpc_js"]

GRPC_JS = Path.home() / ".cache" / "meshnode-tests" / "grpc-js"
ROOT = Path(__file__).resolve().parents[2]
ECHO_CLIENT = ROOT / "tests" / "support" / "grpc_js" / "echo_client.js"
DEMO_PROTO = ROOT / "meshnode" / "demo" / "v1" / "demo.proto"


def grpc_js() -> Path:
    """A directory with @grpc/grpc-js and @grpc/proto-loader installed (npm, once); skips when impossible."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed")
    if not (GRPC_JS / "node_modules" / "@grpc" / "grpc-js").is_dir():
        GRPC_JS.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "@grpc/grpc-js@1.14.7",
                               "@grpc/proto-loader@0.8.1"], cwd=GRPC_JS, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            pytest.skip(f"cannot install @grpc/grpc-js: {proc.stderr[-300:]}")
    return GRPC_JS


async def call_echo(
    address: str, server_name: str, pem_dir: Path, token: str = "-", traceparent: str | None = None
) -> dict[str, Any]:
    """One Echo.Say from grpc-js with ``pem_dir``/ca.pem, cert.pem, key.pem; its JSON answer line."""
    modules = grpc_js()
    args = [str(ECHO_CLIENT), address, server_name, str(pem_dir / "ca.pem"), str(pem_dir / "cert.pem"),
            str(pem_dir / "key.pem"), str(DEMO_PROTO), token]
    if traceparent is not None:
        args.append(traceparent)
    proc = await asyncio.create_subprocess_exec(
        "node", *args, env={**os.environ, "NODE_PATH": str(modules / "node_modules")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result
