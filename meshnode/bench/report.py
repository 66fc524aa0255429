"""The benchmark's outputs: the targets, a JSON file with every number, a markdown report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshnode.bench.plan import BASELINE
from meshnode.bench.service import LONG_STREAM_MESSAGES, STREAM_MESSAGES
from meshnode.bench.stats import json_safe, spread

__all__ = ["evaluate_targets", "markdown", "write_report"]

Row = dict[str, Any]


def _median(s: Mapping[str, Any] | None) -> float | None:
    return None if s is None else s.get("median")


def _target(name: str, goal: str, value: float | None, ok: bool | None, shown: str) -> Row:
    status = "INFO" if ok is None and value is not None else ("n/a" if value is None else ("PASS" if ok else "MISS"))
    return {"target": name, "goal": goal, "value": value, "measured": shown, "status": status}


def evaluate_targets(result: Mapping[str, Any]) -> list[Row]:
    """Each target of the benchmark issue, with the measured value and PASS / MISS / INFO / n/a."""
    rows: list[Row] = []
    summary = result["throughput"]["summary"]
    for workload, variants in summary.items():
        long = workload.startswith("long")
        for name, what in (("C", "meshnode Node"), ("N", "meshnode run, demo service")):
            vs = (variants.get(name) or {}).get("vs_limit")
            if vs is None or (long and name == "N"):
                continue
            tput, cpu = _median(vs["throughput_ratio"]), _median(vs["server_cpu_ratio"])
            if long:  # the per-call costs spread over 200 messages: what the wrapper adds per message
                rows.append(_target(f"{name}/G server CPU per message ({what}), {workload}", "<= 1.02", cpu,
                                    cpu is not None and cpu <= 1.02, _spread(vs["server_cpu_ratio"], 3)))
                continue
            if "stream" in workload:
                rows.append(_target(f"{name}/G ({what}), {workload}", "report", cpu, None,
                                    f"throughput {_spread(vs['throughput_ratio'], 3)}, "
                                    f"server CPU {_spread(vs['server_cpu_ratio'], 3)}"))
                continue
            rows.append(_target(f"{name}/G throughput ({what}), {workload}", ">= 0.97", tput,
                                tput is not None and tput >= 0.97, _spread(vs["throughput_ratio"], 3)))
            rows.append(_target(f"{name}/G server CPU per RPC ({what}), {workload}", "<= 1.03", cpu,
                                cpu is not None and cpu <= 1.03, _spread(vs["server_cpu_ratio"], 3)))
    for workload, cpu_ratios in pair_ratios(result, "C", "K", "server_cpu_us").items():
        tput = pair_ratios(result, "C", "K", "calls_per_s").get(workload)
        rows.append(_target(f"C/K (next to a hand-written server keyed on the certificate), {workload}", "report",
                            cpu_ratios["median"], None,
                            f"server CPU {_spread(cpu_ratios, 3)}, throughput {_spread(tput or {}, 3)}"))
    for workload, variants in summary.items():
        c = variants.get("C")
        if c is None or workload.startswith("long"):
            continue
        tput, cpu = _median(c["throughput_ratio"]), _median(c["server_cpu_ratio"])
        rows.append(_target(f"C/B (next to bare grpcio without authorization), {workload}", "report", cpu, None,
                            f"throughput {_fmt(tput, 3)}, server CPU {_fmt(cpu, 3)}"))
    for workload, variants in summary.items():
        vs = (variants.get("D") or {}).get("vs_node")
        if vs is None or workload.startswith("long"):
            continue
        cpu = _median(vs["server_cpu_ratio"])
        goal = "report" if "stream" in workload else "<= 1.25"
        rows.append(_target(f"D/C server CPU per RPC (tracing, every call sampled), {workload}", goal, cpu,
                            None if goal == "report" else cpu is not None and cpu <= 1.25,
                            f"{_spread(vs['server_cpu_ratio'], 3)} (throughput {_spread(vs['throughput_ratio'], 3)})"))
    rows += _jwt_targets(result)
    for workload, variants in summary.items():
        vs = (variants.get("M") or {}).get("vs_node")
        if vs is None or "stream" in workload:
            continue
        tput, cpu = _median(vs["throughput_ratio"]), _median(vs["server_cpu_ratio"])
        rows.append(_target(f"M/C (metrics) server CPU per RPC, {workload}", "<= 1.03", cpu,
                            cpu is not None and cpu <= 1.03,
                            f"{_spread(vs['server_cpu_ratio'], 3)} (throughput {_spread(vs['throughput_ratio'], 3)})"))
    rot = result["rotation"]
    failed = _target(
        "failed calls during rotations under load", "0 over >= 20 rotations", rot["failed_calls"],
        rot["failed_calls"] == 0, f"{rot['failed_calls']} failed of {rot['calls']} over {rot['rotations']} rotations",
    )
    if rot["rotations"] < 20 and rot["failed_calls"] == 0:
        failed["status"] = "n/a"
        failed["measured"] += " (fewer than 20: run without --quick)"
    rows.append(failed)
    for mode, run in (("", rot), (", verify=spiffe-id", result.get("rotation_spiffe_id"))):
        if run is None:
            continue
        pickup = run["pickup_ms"]
        rows.append(_target(
            f"push to first call on the new certificate (median){mode}", "< 100 ms", pickup["median"],
            pickup["median"] is not None and pickup["median"] < 100 and not pickup["missing"],
            f"{_fmt(pickup['median'], 1)} ms (max {_fmt(pickup['max'], 1)} ms, {pickup['missing']} never seen)",
        ))
    hs = result["handshakes"]["ratio"]["median"]
    rows.append(_target("dynamic/static handshake rate", ">= 0.95", hs, hs is not None and hs >= 0.95, _fmt(hs, 3)))
    return rows


def pair_ratios(result: Mapping[str, Any], num: str, den: str, key: str) -> dict[str, Any]:
    """``num``/``den`` of ``key`` by workload: median [IQR] of the per-round ratios (both variants must run)."""
    cells = result["throughput"].get("cells", [])
    value = {(c["round"], c["workload"], c["variant"]): c[key] for c in cells}
    out: dict[str, Any] = {}
    for workload in result["throughput"]["summary"]:
        ratios = [
            a / b for (r, w, v), a in value.items()
            if w == workload and v == num and a is not None and (b := value.get((r, w, den)))
        ]
        if ratios:
            out[workload] = spread(ratios)
    return out


def jwt_cost(result: Mapping[str, Any]) -> dict[str, Any]:
    """J/E server CPU per RPC by workload: median [IQR] of the per-round ratios (JWT-SVID required vs not,
    both called through a meshnode peer channel)."""
    return pair_ratios(result, "J", "E", "server_cpu_us")


def _jwt_targets(result: Mapping[str, Any]) -> list[Row]:
    rows = []
    for workload, s in jwt_cost(result).items():
        value = s["median"]
        rows.append(_target(f"J/E server CPU per RPC (JWT-SVID required), {workload}", "<= 1.05", value,
                            value is not None and value <= 1.05, _spread(s, 3)))
    return rows


def _ratio_of(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    x, y = _median(a), _median(b)
    return x / y if x is not None and y else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(s: Mapping[str, Any], digits: int = 0) -> str:
    if s.get("median") is None:
        return "-"
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def _throughput_table(result: Mapping[str, Any]) -> list[str]:
    lines = [
        "| workload | variant | calls/s | vs B | p50 ms | p99 ms | server CPU µs/RPC | vs B | vs G "
        "| client CPU µs/RPC |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workload, variants in result["throughput"]["summary"].items():
        for name, row in variants.items():
            errors = f" ({row['errors']} errors)" if row["errors"] else ""
            lines.append(
                f"| {workload} | {name}{errors} | {_spread(row['calls_per_s'])} "
                f"| {_spread(row['throughput_ratio'], 2)} "
                f"| {_fmt(_median(row['p50_ms']))} | {_fmt(_median(row['p99_ms']))} "
                f"| {_spread(row['server_cpu_us'])} | {_spread(row['server_cpu_ratio'], 2)} "
                f"| {_spread((row.get('vs_limit') or {}).get('server_cpu_ratio') or {}, 3)} "
                f"| {_fmt(_median(row['client_cpu_us']), 0)} |"
            )
    return lines


def _metrics_section(result: Mapping[str, Any]) -> list[str]:
    """M against C, round by round: what RPC metrics and the Prometheus endpoint cost."""
    rows = [(w, v["M"]["vs_node"]) for w, v in result["throughput"]["summary"].items() if "vs_node" in v.get("M", {})]
    if not rows:
        return []
    lines = [
        "## Metrics: M (C + RPC metrics, Prometheus endpoint) against C, per round",
        "",
        "| workload | throughput M/C | server CPU per RPC M/C |",
        "|---|---:|---:|",
    ]
    lines += [f"| {w} | {_spread(vs['throughput_ratio'], 3)} | {_spread(vs['server_cpu_ratio'], 3)} |"
              for w, vs in rows]
    counted = result.get("metrics")
    if counted:
        lines += ["", f"M's /metrics counted {counted['calls_counted']} server calls; the clients made "
                      f"{counted['calls_made']} (warm-up included)."]
    return [*lines, ""]


def _handshake_section(hs: Mapping[str, Any]) -> list[str]:
    return [
        f"## Handshakes (new connections: channel, one call, close; {hs['per_batch']} per batch)",
        "",
        "| server credentials | connections/s | server CPU µs/handshake |",
        "|---|---:|---:|",
        f"| static `ssl_server_credentials` | {_spread(hs['static_per_s'])} | {_spread(hs['static_server_cpu_us'])} |",
        f"| dynamic (meshnode `ServerCredentials`) | {_spread(hs['dynamic_per_s'])} "
        f"| {_spread(hs['dynamic_server_cpu_us'])} |",
        "",
        f"dynamic/static: rate {_spread(hs['ratio'], 3)}, server CPU {_spread(hs['cpu_ratio'], 3)}; "
        f"{hs['errors']} failed connections.",
    ]


def _ms(text: str) -> str:
    return text if text == "-" else f"{text} ms"


def _rotation_rows(rot: Mapping[str, Any]) -> list[tuple[str, str]]:
    lat, pickup = rot["latency"], rot["pickup_ms"]
    return [
        ("rotations (of the CA), every", f"{rot['rotations']} ({rot['ca_rotations']}), {rot['interval_s']:g} s"),
        ("calls / failed", f"{rot['calls']} / {rot['failed_calls']}"),
        ("push → first call on the new client certificate, median [IQR]", _ms(_spread(pickup, 1))),
        ("push → first call on the new client certificate, max", _ms(_fmt(pickup["max"], 1))),
        ("rotations whose certificate no call carried", f"{pickup['missing']} of {rot['rotations']}"),
        (f"unary p99, steady ({lat['window_s'] * 1e3:g} ms windows)", _ms(_fmt(lat["steady_p99_ms"]))),
        (f"unary p99 within {lat['after_push_s'] * 1e3:g} ms of a push, median [IQR]",
         _ms(_spread(lat["after_push_p99_ms"], 2))),
        ("unary p99 after a push, worst", _ms(_fmt(lat["after_push_worst_p99_ms"]))),
        ("slowest call after a push", _ms(_fmt(lat["slowest_call_after_push_ms"]))),
    ]


def _rotation_section(result: Mapping[str, Any]) -> list[str]:
    runs = {"verify=dns": result["rotation"]}
    if result.get("rotation_spiffe_id"):
        runs["verify=spiffe-id"] = result["rotation_spiffe_id"]
    rot = result["rotation"]
    rows = {name: _rotation_rows(run) for name, run in runs.items()}
    lines = [
        "## Rotation under load",
        "",
        f"The dev agent rotates every SVID (and, where noted, the CA) while {rot['callers']['unary']} unary callers "
        f"and {rot['callers']['stream']} stream caller call a Node through a client Node's peer channel; both "
        "Nodes get their identities from the agent.",
        "",
        "| measure | " + " | ".join(runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    first = next(iter(rows.values()))
    for i, (label, _value) in enumerate(first):
        lines.append(f"| {label} | " + " | ".join(r[i][1] for r in rows.values()) + " |")
    spiffe = runs.get("verify=spiffe-id")
    if spiffe is not None:
        lines += ["", "verify=spiffe-id: the channel is never rebuilt; the node's control plane serves each new "
                  "identity in a fresh certificate provider slot, which gRPC reads at once, so the next calls run on "
                  "new connections that present it (meshnode.xds.slots)."]
    return lines


def _channels_section(result: Mapping[str, Any]) -> list[str]:
    summary = result["throughput"]["summary"]
    many = list(summary.values())[1] if len(summary) > 1 else {}
    labels = {"C": "bare grpcio mTLS channel", "E": "meshnode peer channel, verify=dns",
              "F": "meshnode peer channel, verify=spiffe-id (xDS)",
              "E3": "meshnode peer channel, verify=dns, 3 endpoints",
              "F3": "meshnode peer channel, verify=spiffe-id (EDS), 3 endpoints"}
    lines = [
        "## Client channels: dns vs spiffe-id, 1 vs 3 endpoints (C server; E3/F3: three C servers as one peer)",
        "",
        "| client | first call on a new channel, ms | client CPU µs/RPC, unary, many callers | vs C |",
        "|---|---:|---:|---:|",
    ]
    for name, label in labels.items():
        first = result["first_calls"].get(name)
        row, c = many.get(name), many.get("C")
        if first is None and row is None:
            continue
        if first is None:
            shown = "-"
        elif "error" in first:
            shown = "failed (see JSON)"
        else:
            shown = _spread(first["ms"], 1)
        rel = _ratio_of(row["client_cpu_ratio"], c["client_cpu_ratio"]) if row and c else None
        cpu = _spread(row["client_cpu_us"]) if row else "-"
        lines.append(f"| {name}: {label} | {shown} | {cpu} | {_fmt(rel, 3)} |")
    for one, three in (("E", "E3"), ("F", "F3")):
        rel = _ratio_of(many[three]["client_cpu_ratio"], many[one]["client_cpu_ratio"]) \
            if one in many and three in many else None
        if rel is not None:
            lines += ["", f"Client CPU per call, 3 endpoints vs 1 ({three} / {one}, medians of per-round ratios "
                      f"to B): {_fmt(rel, 3)}"]
    for name, reason in result["skipped"].items():
        lines += ["", f"Skipped {name}: {reason}"]
    lines += [
        "",
        "A first call includes the TCP connection and the TLS handshake (for spiffe-id also the xDS "
        "resources from the node's control plane); a meshnode node's own start-up is not counted. "
        "Rotation pickup: see the rotation table. A dns channel makes a new channel for every new "
        "identity; a spiffe-id channel keeps its channel, and its control plane serves the new identity in a "
        "fresh certificate provider slot, so gRPC makes new connections that present it.",
    ]
    return lines


def markdown(result: Mapping[str, Any], command: str | None = None) -> str:
    m, s = result["machine"], result["settings"]
    pinned = (f"servers pinned to CPU {m['server_cpu']}, clients to CPU {m['client_cpu']}"
              if m["server_cpu"] is not None else "processes not pinned")
    lines = [
        "# meshnode benchmark",
        "",
        f"{result['created']}: {m['cpus']} CPUs, Python {m['python']}, grpcio {m['grpcio']}; {pinned}; loopback.",
        f"{s['rounds']} rounds of {s['duration']:g} s per cell, variants interleaved; median [IQR] over rounds; "
        f"vs B = median of the per-round ratios to {BASELINE}. Unary calls carry 48 bytes each way; a stream is "
        f"{STREAM_MESSAGES} replies of 48 bytes, a long stream {LONG_STREAM_MESSAGES}; vs G: per-round ratios to the "
        f"hand-written authorizing server. Run took {result['elapsed_s']:.0f} s.",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    lines += ["", "Variants:", ""]
    lines += [f"- **{name}**: {text}" for name, text in result["variants"].items()]
    lines += ["", *_throughput_table(result), ""]
    tracing = result.get("tracing")
    if tracing:
        lines += [f"D exported {tracing['spans_exported']} spans for {tracing['calls']} calls.", ""]
    lines += _metrics_section(result)
    lines += [*_handshake_section(result["handshakes"]), "", *_rotation_section(result), ""]
    lines += [*_channels_section(result), ""]
    lines += ["## Targets", "", "| target | goal | measured | status |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['goal']} | {t['measured']} | {t['status']} |" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out: Path, command: str | None = None) -> tuple[Path, Path, str]:
    """Add the targets, write ``bench.json`` and ``bench.md`` in ``out``; returns both paths and the markdown."""
    result["targets"] = evaluate_targets(result)
    if command:
        result["command"] = command
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "bench.json", out / "bench.md"
    json_path.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    text = markdown(result, command)
    md_path.write_text(text)
    return json_path, md_path, text
