"""``meshnode check node.toml``: a preflight readiness report.

Runs the node's own boot plan (:func:`meshnode.boot.boot`, the code
``meshnode run`` runs): loads the services, obtains the identity the way
``run`` would, builds the effective policy, and prints the identity, its
expiry, the trust domains, the services, the peers with the names they are
verified by and their endpoints as resolved now, and every check, then what
``run`` would do with this config.

``--json`` prints the same report as one JSON object (with the
``not_after`` of the SVID and of every CA in every trust bundle).

``--config-only`` runs the same plan without obtaining an identity (no
Workload API, no SVID files, no dev CA): the configuration, the services it
names, the policy and the production rules that depend on configuration
alone. For CI and for rendered manifests (``deploy/kubernetes``), where no
agent runs.

``--warn-expiry DURATION`` (``24h``, ``90m``, ``3600s``): also fail when
the SVID, or a CA of any trust domain's bundle, expires within DURATION,
naming it (for a cron job or a readiness gate ahead of an outage).

Exit status: 0 when every production check passes (with
``--config-only``: every check that needs no identity; with
``--warn-expiry``: and nothing expires within the window); 1 when one fails
or something expires; 2 when the configuration (or --warn-expiry) is invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
from typing import TYPE_CHECKING, Any

from meshnode.config._reader import printable
from meshnode.config.duration import DURATION_HELP, format_duration, parse_duration
from meshnode.errors import ConfigError

if TYPE_CHECKING:
    from meshnode.boot import Boot, PeerPlan
    from meshnode.config.node import NodeConfig
    from meshnode.identity.snapshot import IdentitySnapshot


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="preflight: report whether a node is ready for production",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="path to node.toml")
    p.add_argument("--socket", help="Workload API socket to use instead of the configured one")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--config-only", action="store_true",
                   help="check the configuration, services and policy without obtaining an identity")
    p.add_argument("--warn-expiry", metavar="DURATION",
                   help=f"fail (exit 1) when the SVID or a bundle CA expires within DURATION ({DURATION_HELP})")
    p.set_defaults(func=run)


def _duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{sign}{h}h{m:02d}m{sec:02d}s" if h else f"{sign}{m}m{sec:02d}s"


def _identity(b: Boot, snap: IdentitySnapshot) -> dict[str, Any]:
    return {
        "source": b.source.description if b.source is not None else "",
        "spiffe_id": str(snap.spiffe_id),
        "serial": snap.serial,
        "expires": snap.not_after.isoformat(),
        "not_after": snap.not_after.isoformat(),
        "seconds_left": round(snap.seconds_left()),
        "trust_domains": {td: len(certs) for td, certs in sorted(snap.bundles.items())},
        "bundles": {
            td: [
                {"subject": ca.subject.rfc4514_string(), "serial": format(ca.serial_number, "x"),
                 "not_after": ca.not_valid_after_utc.isoformat()}
                for ca in sorted(certs, key=lambda c: c.not_valid_after_utc)
            ]
            for td, certs in sorted(snap.bundles.items())
        },
    }


def expiring(snap: IdentitySnapshot, window: float, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """What expires within ``window`` seconds of ``now``: the SVID, and each bundle CA (by trust domain)."""
    now = now or dt.datetime.now(dt.UTC)
    found = []
    items = [("SVID", str(snap.spiffe_id), None, snap.not_after)] + [
        ("CA", ca.subject.rfc4514_string(), td, ca.not_valid_after_utc)
        for td, certs in sorted(snap.bundles.items())
        for ca in certs
    ]
    for kind, name, td, not_after in items:
        left = (not_after - now).total_seconds()
        if left < window:
            what = f"the SVID {name}" if td is None else f"a CA of trust domain '{td}' ({name})"
            found.append({"what": what, "kind": kind, "trust_domain": td, "not_after": not_after.isoformat(),
                          "seconds_left": round(left)})
    return sorted(found, key=lambda f: f["seconds_left"])


def _peers(config: NodeConfig, plan: PeerPlan | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, peer in sorted(config.peers.items()):
        found = plan.resolved.get(name) if plan is not None else None
        out.append({
            "name": name, "address": peer.where, "spiffe_id": str(peer.spiffe_id), "verify": peer.verify,
            "verified_by": f"server name {peer.tls_name}" if peer.verify == "dns" else "exact SPIFFE ID (xDS)",
            "lb": peer.lb, "retries": peer.retries, "retry_on": list(peer.retry_on), "timeout": peer.timeout,
            # as resolved now; None: not resolved (offline, or the resolution failed: see endpoints_error)
            "endpoints": [str(e) for e in found.endpoints] if found is not None else None,
            "endpoints_error": plan.unresolved.get(name) if plan is not None else None,
            "resolved_by": "gRPC, on each connect" if peer.endpoints.kind == "single" else (
                "meshnode" if peer.endpoints.resolved_by_meshnode else "configuration"),
        })
    return out


def _endpoint_line(p: dict[str, Any]) -> str:
    if p["endpoints"] is None:
        return f"cannot resolve now: {p['endpoints_error']}" if p["endpoints_error"] else "not resolved"
    listed = ", ".join(p["endpoints"][:8]) or "none"
    more = f" (+{len(p['endpoints']) - 8} more)" if len(p["endpoints"]) > 8 else ""
    retries = f"{p['retries']} retries on {', '.join(p['retry_on'])}" if p["retries"] else "no retries"
    timeout = f", timeout {p['timeout']:g}s" if p["timeout"] is not None else ""
    return f"{len(p['endpoints'])} now: {listed}{more}  ({p['lb']}, {retries}{timeout})"


def report(b: Boot, path: str, *, config_only: bool = False, warn_expiry: float | None = None) -> dict[str, Any]:
    """What check prints: the boot plan's findings and what `run` would do."""
    config = b.config
    refused = b.refusal()
    in_production = b.refusal("production")
    expiry = None
    if warn_expiry is not None:
        soon = expiring(b.snapshot, warn_expiry) if b.snapshot is not None else []
        expiry = {"window_seconds": warn_expiry, "expiring": soon}
    return {
        "expiry": expiry,
        "node": config.name,
        "mode": config.mode,
        "config": path,
        "config_only": config_only,
        "listen": config.listen,
        "identity": _identity(b, b.snapshot) if b.snapshot is not None else None,
        "notes": list(b.notes),
        "services": b.server.service_names if b.server is not None else [],
        "peers": _peers(config, b.peers),
        "checks": [
            {"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix, "required": c.required}
            for c in b.checks
        ],
        "warnings": list(b.warnings),
        "ready_for_production": in_production is None,
        "run": {
            "starts": refused is None,
            "exit": refused.error.exit_code if refused is not None else None,
            "error": str(refused.exception(b.checks)) if refused is not None else None,
        },
    }


def _print(r: dict[str, Any]) -> None:
    print(f"meshnode check: node {r['node']} (mode {r['mode']}, config {r['config']})")
    if r["config_only"]:
        print("identity         not obtained (--config-only): its checks are not run")
    ident = r["identity"]
    if ident is not None:
        tds = ", ".join(
            f"{td} ({len(cas)} CA" + (f", first expires {cas[0]['not_after']})" if cas else ")")
            for td, cas in ident["bundles"].items()
        )
        print("identity")
        print(f"  source         {ident['source']}")
        print(f"  spiffe id      {ident['spiffe_id']}")
        print(f"  serial         {ident['serial']}")
        print(f"  expires        {ident['expires']} (in {_duration(ident['seconds_left'])})")
        print(f"  trust domains  {tds}")
    for note in r["notes"]:
        print(f"  note           {note}")
    listen = r["listen"] or "none (a client-only node)"
    print(f"listen           {listen}")
    print(f"services         {', '.join(r['services']) or 'none'}")
    if not r["peers"]:
        print("peers            none configured")
    else:
        print("peers")
        for p in r["peers"]:
            print(f"  {p['name']:<12} {p['address']:<22} {p['spiffe_id']}  verify={p['verify']}: {p['verified_by']}")
            print(f"  {'':<12} endpoints {_endpoint_line(p)}")
    print("checks")
    for c in r["checks"]:
        mark = "pass" if c["ok"] else "FAIL"
        scope = "" if c["required"] == "production" else " (every mode)"
        line = f"  [{mark}] {c['name']}{scope}: {c['detail']}"
        if not c["ok"] and c["fix"]:
            line += f"{os.linesep}         fix: {c['fix']}"
        print(line)
    for warning in r["warnings"]:
        print(f"  warning: {warning}")
    expiry = r["expiry"]
    if expiry is not None:
        window = format_duration(expiry["window_seconds"])
        print(f"expiry           warn within {window}")
        for item in expiry["expiring"]:
            print(f"  [SOON] {item['what']} expires {item['not_after']} (in {_duration(item['seconds_left'])})")
        if not expiry["expiring"]:
            print(f"  [ok] neither the SVID nor a bundle CA expires within {window}")
    run = r["run"]
    if r["config_only"] and run["starts"]:
        print("run              would go on to obtain the identity (not tried: --config-only)")
    elif run["starts"]:
        print(f"run              would start (mode {r['mode']})")
    else:
        print(f"run              would refuse to start (exit {run['exit']}): {run['error']}")
    failed = [c for c in r["checks"] if not c["ok"]]
    if expiry is not None and expiry["expiring"]:
        names = "; ".join(f"{i['what']} in {_duration(i['seconds_left'])}" for i in expiry["expiring"])
        print(f"result: expires within {format_duration(expiry['window_seconds'])}: {names}")
    if r["config_only"]:
        verdict = "valid for production" if r["ready_for_production"] else "NOT valid for production"
        print(f"result: configuration {verdict} ({len(failed)} of {len(r['checks'])} checks fail; "
              "identity not checked)")
    elif r["ready_for_production"]:
        print(f"result: ready for production ({len(r['checks'])} checks pass)")
    else:
        print(f"result: NOT ready for production ({len(failed)} of {len(r['checks'])} checks fail)")


def run(args: argparse.Namespace) -> int:
    from meshnode.boot import boot
    from meshnode.cli._logging import setup_logging
    from meshnode.config.node import load_node_config

    window = _window(args.warn_expiry)
    if args.config_only and args.socket:
        raise ConfigError("check: --socket has no use with --config-only (no identity is obtained)")
    if args.config_only and window is not None:
        raise ConfigError("check: --warn-expiry has no use with --config-only (no identity is obtained)")
    setup_logging(False)
    config = load_node_config(args.config)
    if args.socket:
        config = dataclasses.replace(config, identity=dataclasses.replace(config.identity, socket=args.socket))
    with contextlib.closing(boot(config, offline=args.config_only)) as booted:
        r = report(booted, args.config, config_only=args.config_only, warn_expiry=window)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        _print(r)
    soon = r["expiry"] is not None and bool(r["expiry"]["expiring"])
    return 0 if r["ready_for_production"] and not soon else 1


def _window(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(reason=f"--warn-expiry {printable(repr(text))} {exc} (write {DURATION_HELP})",
                          component="check", key="--warn-expiry", value=text) from None
