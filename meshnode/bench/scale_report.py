"""The tables of ``meshnode bench --scale``: scale.md from the numbers in scale.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshnode.bench.stats import json_safe

__all__ = ["markdown", "write_scale_report"]


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _iqr(s: Mapping[str, Any], digits: int = 1) -> str:
    if s.get("median") is None:
        return "-"
    return f"{_f(s['median'], digits)} [{_f(s['q1'], digits)}-{_f(s['q3'], digits)}]"


def _policy(p: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Decision cost vs policy size", "",
        "Per decision through `Authorizer.check`, microseconds (best of several batches). Miss, new version: every "
        "check under a new policy version (the caller's identity cached). Miss, new caller: every check by "
        "another client certificate (parsed and checked too). Hit: the verdict cache. The measured callers "
        "match the last rule; half the rules are exact IDs, half prefixes.", "",
        "| policy | rules | miss, new version (us) | miss, new caller (us) | hit (us) |", "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['kind']} | {r['rules']:,} | {_f(r['miss_version_us'])} | {_f(r['miss_caller_us'])} | "
              f"{_f(r['hit_us'], 2)} |" for r in p["decisions"]]
    load = p["load"]
    lines += [
        "", f"Load and reload at {load['rules']:,} rules (ms, median):", "",
        "| what | ms |", "|---|---:|",
        f"| A43 file: first load (read, parse, index) | {_f(load['a43_load_ms'])} |",
        f"| A43 file: reload after a change (development) | {_f(load['a43_reload_ms'])} |",
        f"| A43 file: reload with the production check | {_f(load['a43_reload_production_ms'])} |",
        f"| `[authz] allow` list: build + production check | {_f(load['allowlist_load_production_ms'])} |",
    ]
    return lines


def _peers(p: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Memory and start-up vs configured peers", "",
        f"`meshnode run`, dev identity, N `[peers.*]` entries that are never called; RSS and open files "
        f"{p['settle_s']:g} s after the ready line. One fresh process per row.", "",
        "| verify | peers | time to ready (ms) | RSS (MiB) | open fds |", "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['verify']} | {r['peers']:,} | {_f(r['ready_ms'], 0)} | {_f(r['rss_mib'])} | {r['fds']} |"
              for r in p["rows"]]
    slopes = ", ".join(f"{mode}: {_f(v)} KiB" for mode, v in p["rss_kib_per_idle_peer"].items())
    return [*lines, "", f"RSS per idle peer (slope from the fewest to the most peers): {slopes}."]


def _connections(c: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Server cost vs concurrent mTLS connections", "",
        f"Each connection makes one Echo call every {c['interval_s']:g} s; numbers over a {c['window_s']:g} s window "
        "after every connection made its first call. Server CPU is its utime+stime (all threads), 100% = one "
        "CPU; clients: the client processes together; machine busy: every process on the machine, 100% = all "
        "CPUs (the others' work included).", "",
        "| connections | connected | server CPU % | CPU per call (us) | RSS (MiB) | RSS per conn (KiB) | "
        "calls/s | p50 (ms) | p99 (ms) | errors | clients CPU % | machine busy % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['connections']:,} | {r['connected']:,} | {_f(r['server_cpu_pct'])} "
        f"| {_f(r['server_cpu_us_per_call'], 0)} | {_f(r['server_rss_mib'])} | {_f(r['rss_kib_per_connection'])} "
        f"| {_f(r['calls_per_s'])} "
        f"| {_f(r['p50_ms'], 2)} | {_f(r['p99_ms'], 2)} | {r['errors'] + r['failed']} "
        f"| {_f(r['clients_cpu_pct'])} | {_f(r['machine_busy_pct'])} |"
        for r in c["rows"]
    ]
    return [*lines, "", f"Where it bends: {c['bend']}."]


def _rotation(r: Mapping[str, Any]) -> list[str]:
    return [
        "## Rotation cost at scale", "",
        f"{r['connections']:,} client connections open, {r['peers']} of them calling Relay through their own "
        f"peer, so {r['peers']} peer channels are open and in use. Under load (each connection one call a second): "
        f"{r['loaded_rotations']} windows of {r['window_s']:g} s with one SVID rotation each, next to windows "
        f"without. CPU: {r['rotations']} rotations with the calls paused (connections open), each followed by one "
        "call through every peer channel, minus the same calls without a rotation.", "",
        "| measure | median [IQR] |", "|---|---:|",
        f"| server CPU-seconds per rotation (above the same calls without one) | {_iqr(r['cost_cpu_s'], 3)} |",
        f"| server CPU-seconds of a quiet window without rotation | {_iqr(r['idle_cpu_s'], 3)} |",
        f"| server CPU % under load | {_iqr(r['loaded_server_cpu_pct'])} |",
        f"| call p99 (ms) under load, windows without a rotation | {_iqr(r['p99_ms_idle'], 2)} |",
        f"| call p99 (ms) under load, windows with a rotation | {_iqr(r['p99_ms_rotation'], 2)} |",
        f"| failed calls (of {r['calls']:,}) | {r['errors']} |",
    ]


def _startup(s: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Process start-up", "",
        f"{s['runs']} interleaved runs of each; `meshnode` is `python -m meshnode.cli`.", "",
        "| command | ms, median [IQR] | vs import grpc |", "|---|---:|---:|",
    ]
    return lines + [f"| `{r['command']}` | {_iqr(r['ms'], 0)} | {_f(r['vs_import_grpc'], 2)}x |" for r in s["rows"]]


def markdown(result: Mapping[str, Any], command: str | None = None) -> str:
    m = result["machine"]
    load = m.get("load_avg_at_start")
    lines = [
        "# meshnode scale benchmark", "",
        f"{result['created']}: {m['cpus']} CPUs, Python {m['python']}, grpcio {m['grpcio']}, {m['platform']}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in load) if load else 'unknown'}; processes not "
        f"pinned; loopback. Run took {result['elapsed_s']:.0f} s.",
    ]
    if result["settings"].get("quick"):
        lines += ["", "**Quick run (smoke test): sizes are small and the numbers mean nothing.**"]
    if command:
        lines += ["", f"Command: `{command}`"]
    for section in (_policy(result["policy"]), _peers(result["peers"]), _connections(result["connections"]),
                    _rotation(result["rotation"]), _startup(result["startup"])):
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def write_scale_report(result: dict[str, Any], out: Path, command: str | None = None) -> tuple[Path, Path, str]:
    """Write ``scale.json`` and ``scale.md`` in ``out``; returns both paths and the markdown."""
    if command:
        result["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "scale.json", out / "scale.md"
    json_path.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    text = markdown(result, command)
    md_path.write_text(text)
    return json_path, md_path, text
