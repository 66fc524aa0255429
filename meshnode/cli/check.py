"""``meshnode check node.toml``: a preflight readiness report.

Loads the configuration, obtains the identity the way ``meshnode run``
would, and prints the identity, its expiry, the trust domains, the peers
with the names they are verified by, and every production check.

Exit status: 0 when every production check passes; 1 when one fails;
2 when the configuration is invalid; 3 when the identity is unavailable in
production mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from meshnode.cli._logging import setup_logging
from meshnode.config.node import NodeConfig, load_node_config
from meshnode.identity.snapshot import IdentitySnapshot
from meshnode.preflight import Check, identity_checks, open_identity, static_checks
from meshnode.service import load_service_classes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="preflight: report whether a node is ready for production",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="path to node.toml")
    p.add_argument("--socket", help="Workload API socket to use instead of the configured one")
    p.set_defaults(func=run)


def _duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{sign}{h}h{m:02d}m{sec:02d}s" if h else f"{sign}{m}m{sec:02d}s"


def _identity_lines(source_desc: str, snap: IdentitySnapshot) -> list[str]:
    tds = ", ".join(f"{td} ({len(certs)} CA)" for td, certs in sorted(snap.bundles.items()))
    return [
        "identity",
        f"  source         {source_desc}",
        f"  spiffe id      {snap.spiffe_id}",
        f"  serial         {snap.serial}",
        f"  expires        {snap.not_after.isoformat()} (in {_duration(snap.seconds_left())})",
        f"  trust domains  {tds}",
    ]


def _peer_lines(config: NodeConfig) -> list[str]:
    if not config.peers:
        return ["peers          none configured"]
    out = ["peers"]
    for name, peer in sorted(config.peers.items()):
        how = f"server name {peer.tls_name}" if peer.verify == "dns" else "exact SPIFFE ID (xDS)"
        out.append(f"  {name:<12} {peer.address:<22} {peer.spiffe_id}  verify={peer.verify}: {how}")
    return out


def _policy_check(config: NodeConfig) -> list[Check]:
    if config.authz.policy is None:
        return []
    from meshnode.authz import load_policy_file

    try:
        load_policy_file(config.authz.policy)
    except Exception as exc:
        return [Check("policy file is valid", False, str(exc), "run `meshnode policy check` on it")]
    return [Check("policy file is valid", True, str(config.authz.policy))]


def run(args: argparse.Namespace) -> int:
    setup_logging(False)
    config = load_node_config(args.config)
    if args.socket:
        config = dataclasses.replace(config, identity=dataclasses.replace(config.identity, socket=args.socket))
    services = load_service_classes(config.services, str(args.config))
    declares = any(getattr(k, "allow", ()) for k in services)
    print(f"meshnode check: node {config.name} (mode {config.mode}, config {args.config})")
    checks = static_checks(config, service_policies=declares) + _policy_check(config)
    source = None
    try:
        source, notes = open_identity(config)
        snap = source.current()
        for line in _identity_lines(source.description, snap):
            print(line)
        fallback = bool(notes) and config.identity.source != "dev"
        checks.append(Check(
            "identity came from the configured source", not fallback,
            "dev fallback (no agent answered)" if fallback else source.description,
            "start the agent / fix [identity] socket (see the note above)",
        ))
        for note in notes:
            print(f"  note           {note}")
        checks += identity_checks(config, snap)
    finally:
        if source is not None:
            source.close()
    for line in _peer_lines(config):
        print(line)
    print("checks (production requirements)")
    for c in checks:
        mark = "pass" if c.ok else "FAIL"
        line = f"  [{mark}] {c.name}: {c.detail}"
        if not c.ok and c.fix:
            line += f"{os.linesep}         fix: {c.fix}"
        print(line)
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"result: NOT ready for production ({len(failed)} of {len(checks)} checks fail)")
        return 1
    print(f"result: ready for production ({len(checks)} checks pass)")
    return 0
