"""How fast a rotation reaches new handshakes on a spiffe-id channel: fresh provider slots vs. file re-reads.

``python -m meshnode.bench.rotation_latency [--rounds 3] [--rotations 8] [--interval 1.5]``

Each round runs, in one process per mode (gRPC reads one xDS bootstrap per
process), a node's xDS control plane (:class:`~meshnode.xds.XdsControlPlane`)
with one spiffe-id channel to a local mTLS server that notes, per method,
when each client certificate first arrives. Four callers load the channel;
the control plane gets a new client SVID every ``--interval`` seconds
(``update_identity``: what a node does when its source pushes). Modes:

* ``slots``: meshnode's certificate provider slots (the default);
* ``reread``: ``slots=1``, what meshnode did before: the new files reach
  gRPC only through its file_watcher's re-read, every second.

Per rotation it reports, from the ``update_identity`` call:

* ``channel``: the first call of the open channel that carries the new
  certificate (none while the channel keeps its connections);
* ``fresh``: the first *new* connection that presents it: a probe dials a
  connection of its own (``grpc.use_local_subchannel_pool``) every 20 ms.

Prints a markdown table (medians and quartiles over every rotation of every
round, the modes' rounds interleaved) and writes rotation-latency.json to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshnode.bench.stats import spread
from meshnode.devagent.ca import DevCA
from meshnode.identity.snapshot import certs_pem
from meshnode.spiffeid import parse_spiffe_id
from meshnode.testing import issue_snapshot
from meshnode.xds import PeerTarget, XdsControlPlane

__all__ = ["main"]

_TD = "bench.example"
_CLIENT_ID = f"spiffe://{_TD}/client"
_SERVER_ID = f"spiffe://{_TD}/server"
_MODES = {"slots": 4, "reread": 1}  # mode -> certificate provider slots
_LOAD, _PROBE = "/bench.Rotation/Load", "/bench.Rotation/Probe"
_PROBE_EVERY = 0.02
_WAIT = 3.0  # per rotation, for each of the two measures


class _Server:
    """An mTLS server answering both methods with nothing; notes when each client serial first arrives."""

    def __init__(self, ca: DevCA) -> None:
        issued = ca.issue(_SERVER_ID, dt.timedelta(hours=1), map_dns=False)
        key = issued.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
        creds = grpc.ssl_server_credentials([(key, certs_pem(issued.chain))], certs_pem(ca.bundle), True)
        self.first: dict[tuple[str, str], float] = {}
        self.server = grpc.aio.server()
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        handlers = {path.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(self._handler(path))
                    for path in (_LOAD, _PROBE)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Rotation", handlers),))

    def _handler(self, path: str) -> Any:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            pem = context.auth_context()["x509_pem_cert"][0]
            serial = format(x509.load_pem_x509_certificate(pem).serial_number, "x")
            self.first.setdefault((path, serial), time.monotonic())
            return b""
        return handle


async def _child(slots: int, rotations: int, interval: float) -> dict[str, Any]:
    ca = DevCA(_TD)
    server = _Server(ca)
    await server.server.start()
    cp = XdsControlPlane("rotation-latency", bundle_map=True, slots=slots)
    cp.update_identity(issue_snapshot(ca, _CLIENT_ID, map_dns=False))
    cp.set_peers({"server": PeerTarget(f"127.0.0.1:{server.port}", parse_spiffe_id(_SERVER_ID))})
    each: list[dict[str, Any]] = []
    failed = 0
    async with cp:
        channel = grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials())
        load = channel.unary_unary(_LOAD)
        await load(b"", timeout=10, wait_for_ready=True)
        stop = asyncio.Event()

        async def caller() -> None:
            nonlocal failed
            while not stop.is_set():
                try:
                    await load(b"", timeout=5)
                except grpc.aio.AioRpcError:
                    failed += 1

        async def probe(serial: str, until: float) -> None:
            while (_PROBE, serial) not in server.first and time.monotonic() < until:
                async with grpc.aio.secure_channel(cp.target("server"), cp.channel_credentials(),
                                                   options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
                    try:
                        await fresh.unary_unary(_PROBE)(b"", timeout=2)
                    except grpc.aio.AioRpcError:
                        pass
                await asyncio.sleep(_PROBE_EVERY)

        callers = [asyncio.ensure_future(caller()) for _ in range(4)]
        for _ in range(rotations):
            await asyncio.sleep(interval)
            snapshot = issue_snapshot(ca, _CLIENT_ID, map_dns=False)
            pushed = time.monotonic()
            cp.update_identity(snapshot)
            await probe(snapshot.serial, pushed + _WAIT)
            while (_LOAD, snapshot.serial) not in server.first and time.monotonic() < pushed + _WAIT:
                await asyncio.sleep(0.005)

            def ms(path: str, serial: str = snapshot.serial, at: float = pushed) -> float | None:
                seen = server.first.get((path, serial))
                return None if seen is None else (seen - at) * 1e3

            each.append({"channel_ms": ms(_LOAD), "fresh_ms": ms(_PROBE)})
        stop.set()
        await asyncio.gather(*callers)
        await channel.close()
    await server.server.stop(None)
    return {"slots": slots, "each": each, "failed_calls": failed}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rotations": sum(len(r["each"]) for r in runs),
                           "failed_calls": sum(r["failed_calls"] for r in runs)}
    for key in ("channel_ms", "fresh_ms"):
        values = [e[key] for r in runs for e in r["each"]]
        seen = [v for v in values if v is not None]
        out[key] = {**spread(seen), "max": max(seen) if seen else None, "missing": len(values) - len(seen)}
    return out


def _cell(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return f"never (within {_WAIT:.0f} s)"
    text = f"{s['median']:.1f} [{s['q1']:.1f}-{s['q3']:.1f}] ms, max {s['max']:.1f}"
    return text + (f", {s['missing']} never" if s["missing"] else "")


def _markdown(summary: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "## Rotation to new handshakes, verify=spiffe-id (one xDS channel under load, 4 callers)", "",
        f"`{command}`", "",
        "| mode | rotations | failed calls | update → first call of the open channel with the new SVID "
        "| update → first new connection with it |",
        "|---|---:|---:|---|---|",
    ]
    labels = {"slots": "fresh certificate provider slot (meshnode now)",
              "reread": "file re-read only, slots=1 (meshnode before)"}
    for mode, s in summary.items():
        lines.append(f"| {labels[mode]} | {s['rotations']} | {s['failed_calls']} | {_cell(s['channel_ms'])} "
                     f"| {_cell(s['fresh_ms'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshnode.bench.rotation_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every mode once (default 3)")
    p.add_argument("--rotations", type=int, default=8, help="rotations per mode and round (default 8)")
    p.add_argument("--interval", type=float, default=1.5, help="seconds between rotations (default 1.5)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for rotation-latency.json")
    p.add_argument("--child", choices=sorted(_MODES), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = asyncio.run(_child(_MODES[args.child], args.rotations, args.interval))
        print(json.dumps(result), flush=True)
        return 0
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in _MODES}
    for round_ in range(args.rounds):
        order = list(_MODES)[round_ % 2:] + list(_MODES)[:round_ % 2]
        for mode in order:
            print(f"rotation-latency: round {round_ + 1}/{args.rounds}, {mode}", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, "-m", "meshnode.bench.rotation_latency", "--child", mode,
                 "--rotations", str(args.rotations), "--interval", str(args.interval)],
                capture_output=True, text=True, timeout=120 + args.rotations * (args.interval + 2 * _WAIT),
                env={**os.environ, "GRPC_VERBOSITY": "NONE"},
            )
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {mode: _summary(r) for mode, r in runs.items()}
    command = "python -m meshnode.bench.rotation_latency " + " ".join(argv if argv is not None else sys.argv[1:])
    text = _markdown(summary, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rotation-latency.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
