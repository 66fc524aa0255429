"""Large policy files for the benchmark: what a header rule costs next to 10,001 plain rules.

:func:`scale_policy` writes the issue-11 scenario as an A43 document:
``rules`` allow rules, each for another caller, the bench client's own
rule last (so a full evaluation walks them all), and optionally one deny
rule with a header condition that applies to every bench call (a caller
sending ``x-debug`` is refused; the bench client never does). Before the
fix, that one header rule made every call walk every rule; now the cached
verdict keeps a residual of that one rule and tests its header per call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meshnode.bench.pki import CLIENT_ID, TRUST_DOMAIN

__all__ = ["SCALE_RULES", "scale_policy", "write_policy"]

#: allow rules of the scenario (the issue's 10,001)
SCALE_RULES = 10_001


def scale_policy(rules: int = SCALE_RULES, *, header_rule: bool = False) -> dict[str, Any]:
    """The A43 document: ``rules`` allow rules (the bench client's last), plus one header rule."""
    allow = [
        {"name": f"other-{i}", "source": {"principals": [f"spiffe://{TRUST_DOMAIN}/bench/other-{i}"]}}
        for i in range(rules - 1)
    ]
    allow.append({"name": "bench-client", "source": {"principals": [CLIENT_ID]}})
    doc: dict[str, Any] = {"name": f"scale-{rules}{'-header' if header_rule else ''}", "allow_rules": allow}
    if header_rule:
        doc["deny_rules"] = [{
            "name": "no-debug-calls",
            "request": {"paths": ["/meshnode.demo.v1.Echo/*"], "headers": [{"key": "x-debug", "values": ["*"]}]},
        }]
    return doc


def write_policy(path: Path, rules: int = SCALE_RULES, *, header_rule: bool = False) -> Path:
    """Write :func:`scale_policy` to ``path`` atomically; returns ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(scale_policy(rules, header_rule=header_rule)))
    os.replace(tmp, path)
    return path
