"""``meshnode policy check|explain FILE``: validate a policy, or see what it decides.

FILE is a gRPC authorization policy (A43 JSON) or a TOML file with an
``[authz]`` table (``allow = [...]``, optionally ``policy = "file.json"``).
``explain --config node.toml`` explains the node's *effective* policy
instead, built by the node's own boot plan: ``[authz]``, the policy file,
the services' class ``allow`` and ``@only`` rules and the built-in
health/reflection rules, exactly as ``meshnode run`` would enforce them.

Exit status:

* ``check``: 0 when the policy is valid, 2 (with the reason, file, line and
  column) when it is not;
* ``explain``: 0 when the call would be allowed, 1 when it would be denied,
  2 when the policy, the SPIFFE ID or the method is invalid.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TYPE_CHECKING

from meshnode.errors import InvalidSpiffeIdError, PolicyError

if TYPE_CHECKING:
    from meshnode.authz.policy import Policy


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "policy",
        help="validate an authorization policy or explain its decision for a caller",
        description="Work with authorization policies: gRPC A43 JSON files, or TOML files with an "
        "[authz] table.",
    )
    actions = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a policy file (exit 2 with the reason and location when invalid)",
        description="Validate a policy file as the node would load it. Exit 0 when valid, "
        "2 when not (the message names the file, line and column).",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=run_check)
    explain = actions.add_parser(
        "explain",
        help="show what a policy decides for one caller and method, rule by rule",
        description="Evaluate the policy for one call and show each rule's verdict. "
        "Exit 0 when the call would be allowed, 1 when denied, 2 on invalid input.",
    )
    target = explain.add_mutually_exclusive_group(required=True)
    target.add_argument("file", metavar="FILE", nargs="?")
    target.add_argument("--config", metavar="NODE_TOML",
                        help="explain the effective policy of the node this node.toml configures")
    explain.add_argument("--peer", required=True, metavar="SPIFFE_ID", help="the caller's SPIFFE ID")
    explain.add_argument("--method", required=True, metavar="/pkg.Service/Method", help="the full method path")
    explain.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE",
        help="a request header, for policies with header rules (repeatable)",
    )
    explain.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    from meshnode.authz.config import load_policy_file

    warnings: list[str] = []
    policy = load_policy_file(args.file, warnings)
    for note in warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(
        f"{args.file}: valid policy {policy.name!r}: {len(policy.deny_rules)} deny rule(s), "
        f"{len(policy.allow_rules)} allow rule(s)"
    )
    try:
        notes = policy.check_production()  # the node's check, without its trust domains and built-in rules
    except PolicyError as exc:
        notes = (f"production would refuse it: {exc.reason}",)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return 0


def _effective_policy(path: str) -> Policy:
    """The policy `meshnode run path` would enforce (the node's boot plan, without its identity)."""
    from meshnode.boot import boot
    from meshnode.config.node import load_node_config

    config = load_node_config(path)
    with contextlib.closing(boot(config, offline=True)) as booted:
        refused = booted.refusal("development")  # a policy or service that cannot even load
        if refused is not None:
            raise refused.exception(booted.checks)
        if booted.policy is None:
            raise PolicyError(reason=f"{path}: a client-only node (no [node] listen) serves nothing to explain",
                              component="authz")
        return booted.policy.current().policy


def run_explain(args: argparse.Namespace) -> int:
    from meshnode.authz.config import load_policy_file
    from meshnode.authz.policy import Request
    from meshnode.authz.scopes import check_method_path
    from meshnode.spiffeid import parse_spiffe_id

    policy = _effective_policy(args.config) if args.config else load_policy_file(args.file)
    try:
        peer = parse_spiffe_id(args.peer)
    except InvalidSpiffeIdError as exc:
        raise PolicyError(f"authz: --peer: invalid SPIFFE ID {args.peer!r}: {exc.reason}", reason=exc.reason) from None
    method = check_method_path(args.method, "--method")
    headers = []
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PolicyError(reason=f"--header {item!r}: expected KEY=VALUE", component="authz")
        headers.append((key.lower(), value))
    explanation = policy.explain(Request.from_metadata(peer, method, headers))
    print(f"policy {policy.name!r} ({args.config or args.file}), caller {peer}, method {method}")
    print(explanation.render())
    return 0 if explanation.decision.allowed else 1
