"""From configuration values to a policy source, and loading policy files for tooling.

The node's config (``[authz]`` in node.toml, read by :mod:`meshnode.config`)
gives ``allow`` (allowlist strings) and ``policy`` (an A43 JSON file).
:func:`policy_source` combines them with code-level policies (per service
or method): deny rules of any part win over allow rules of every part.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from opentelemetry import metrics

from meshnode.authz.a43 import load_a43_file
from meshnode.authz.policy import Policy, merge_policies, policy_from_allowlist
from meshnode.authz.source import PolicyFile, StaticPolicy
from meshnode.config._reader import Section, load_toml
from meshnode.errors import PolicyError

__all__ = ["load_policy_file", "policy_source"]


def policy_source(
    *,
    allow: Iterable[str] = (),
    policy_file: str | os.PathLike[str] | None = None,
    extra: Iterable[Policy] = (),
    reload_interval: float = 0.3,
    meter_provider: metrics.MeterProvider | None = None,
    validate: Callable[[Policy], None] | None = None,
) -> StaticPolicy | PolicyFile:
    """The allowlist plus ``extra`` policies, plus the watched A43 file when given.

    Raises PolicyError for an invalid entry or file. A :class:`PolicyFile`
    owns a thread: close it with the node.
    """
    base = merge_policies(policy_from_allowlist(allow), *extra, name="node")
    if policy_file is None:
        return StaticPolicy(base)
    return PolicyFile(
        policy_file, base=base, interval=reload_interval, meter_provider=meter_provider, validate=validate
    )


def load_policy_file(path: str | os.PathLike[str], warnings: list[str] | None = None) -> Policy:
    """Load a policy for tooling: an A43 JSON file, or a TOML file with an ``[authz]`` table.

    In TOML, ``allow`` and ``policy`` (relative to the TOML file) are used;
    ``audit`` and ``dry_run`` are accepted and ignored; other tables are not read.
    """
    p = Path(path)
    if p.suffix != ".toml":
        return load_a43_file(p, warnings)
    data = load_toml(p, "authz")
    if "authz" not in data:
        raise PolicyError(reason=f"{p} has no [authz] table; expected [authz] allow = [...]", component="authz")
    section = Section(data["authz"], "authz", str(p), "authz")
    allow = section.strings("allow", ())
    policy_name = section.string("policy", None)
    section.string("audit", None)
    section.boolean("dry_run", False)
    section.done()
    policy = policy_from_allowlist(allow, where=f"{p}: [authz] allow", name=p.name)
    if policy_name is not None:
        policy = merge_policies(policy, load_a43_file(p.parent / policy_name, warnings), name=p.name)
    return policy
