"""gRPC authorization policy files (gRFC A43, with A59's audit options).

The JSON format and its meaning are gRPC's: deny rules first, then allow
rules, nothing matched means deny; in a rule, ``source.principals`` (any of)
and ``request.paths`` (any of) and ``request.headers`` (all of, each any of
its values) must all match; a missing ``source`` or ``request`` matches
everything. ``allow_rules`` is required and must not be empty.

Principals are matched against the caller's SPIFFE ID: meshnode authorizes
only certificates with exactly one URI SAN, so gRPC's "URI SAN, else DNS
SAN, else subject" order always lands on the SPIFFE ID.

Where meshnode is stricter than gRPC (each is refused with a message and
the line and column, instead of being silently accepted):

* unknown fields and duplicate keys (gRPC ignores a duplicate's first value);
* a ``*`` anywhere but a single leading or trailing wildcard;
* principals that could never match a SPIFFE ID (DNS names, ``""``), exact
  ``spiffe://`` principals that break the SPIFFE ID spec, prefix principals
  whose fixed part is not a valid ID (``spiffe://td/ns/*`` checks
  ``spiffe://td/ns``);
* exact and prefix paths without the leading ``/``;
* empty ``principals``/``paths``/``headers``/``values`` lists (gRPC reads an
  empty list as "anyone": omit the field to mean that);
* ``-bin`` header keys (their values are bytes, never matched as text), on
  top of A43's refusals: pseudo-headers (``:``), ``grpc-`` keys, ``host``
  and hop-by-hop headers;
* two rules of one list with the same name (gRPC keeps only the last).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

from meshnode.authz._jsonloc import Path, json_locations, render_path
from meshnode.authz.audit import AuditCondition
from meshnode.authz.matchers import AnyOf, AnyPeer, IdPattern, PeerMatcher
from meshnode.authz.patterns import PatternKind, StringPattern, parse_pattern
from meshnode.authz.policy import Effect, Policy, Rule
from meshnode.authz.scopes import (
    UNSUPPORTED_HEADERS,
    AnyMethod,
    AnyOfMethods,
    HeaderCondition,
    MethodScope,
    PathPattern,
    check_method_path,
)
from meshnode.errors import InvalidSpiffeIdError, PolicyError
from meshnode.spiffeid import parse_spiffe_id

__all__ = ["load_a43_file", "parse_a43"]

_SCHEME = "spiffe://"
_TD_CHARS = re.compile(r"[a-z0-9._-]*")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]*")
_AUDIT_CONDITIONS = ("NONE", "ON_DENY", "ON_ALLOW", "ON_DENY_AND_ALLOW")
_BUILTIN_AUDIT_LOGGERS = ("stdout_logger",)


def load_a43_file(path: str | os.PathLike[str], warnings: list[str] | None = None) -> Policy:
    """Read and parse an A43 policy file; PolicyError names the file, line and column."""
    p = FsPath(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PolicyError(reason=f"policy file {p} does not exist", component="authz") from None
    except UnicodeDecodeError:
        raise PolicyError(reason=f"policy file {p} is not UTF-8 text", component="authz") from None
    except OSError as exc:
        raise PolicyError(reason=f"cannot read policy file {p}: {exc.strerror}", component="authz") from None
    return parse_a43(text, str(p), warnings)


def parse_a43(text: str, source: str = "<policy>", warnings: list[str] | None = None) -> Policy:
    """Parse A43 JSON ``text``; ``source`` names it in errors. Appends lint notes to ``warnings``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(
            reason=f"{source}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}", component="authz"
        ) from None
    except RecursionError:
        raise PolicyError(reason=f"{source}: JSON nested too deeply to be a policy", component="authz") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (sys.get_int_max_str_digits)
        raise PolicyError(reason=f"{source}: not a usable JSON document: {exc}", component="authz") from None
    locations, duplicates = json_locations(text)
    reader = _Reader(source, locations, warnings if warnings is not None else [])
    if duplicates:
        raise reader.error(duplicates[0], "appears twice in the same object; keep one")
    return reader.policy(data)


class _Reader:
    def __init__(self, source: str, locations: Mapping[Path, tuple[int, int]], warnings: list[str]) -> None:
        self.source = source
        self.locations = locations
        self.warnings = warnings

    def where(self, path: Path) -> str:
        probe = path
        while probe and probe not in self.locations:
            probe = probe[:-1]
        line, col = self.locations.get(probe, (1, 1))
        return f"{self.source}:{line}:{col}: {render_path(path)}"

    def error(self, path: Path, message: str) -> PolicyError:
        """``authz: <file>:<line>:<column>: <json path>: <message>``, each part a field too."""
        probe = path
        while probe and probe not in self.locations:
            probe = probe[:-1]
        line, column = self.locations.get(probe, (1, 1))
        reason = f"{self.where(path)}: {message}"
        return PolicyError(reason=reason, component="authz", path=self.source, line=line, column=column,
                           key=render_path(path))

    def fields(self, obj: Any, path: Path, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.error(path, f"must be a JSON object, not {_kind(obj)}")
        for key in obj:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error((*path, key), f"unknown field {key!r} (known here: {', '.join(known)}){hint}")
        for key in required:
            if key not in obj:
                raise self.error(path, f"the field {key!r} is required")
        return obj

    def string(self, value: Any, path: Path) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be a string, not {_kind(value)}")
        return value

    def items(self, value: Any, path: Path, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(path, f"must be a JSON array, not {_kind(value)}")
        if not value:
            raise self.error(path, f"is an empty list; {what}")
        return value

    # -- the document -----------------------------------------------------

    def policy(self, data: Any) -> Policy:
        doc = self.fields(
            data, (), ("name", "deny_rules", "allow_rules", "audit_logging_options"), required=("name",)
        )
        name = self.string(doc["name"], ("name",))
        if not name.strip():
            raise self.error(("name",), "must not be empty")
        if "allow_rules" not in doc:
            raise self.error((), "the field 'allow_rules' is required (A43); a policy without it denies everything")
        allow = self.items(doc["allow_rules"], ("allow_rules",), "A43 requires at least one allow rule")
        deny = doc.get("deny_rules", [])
        if not isinstance(deny, list):
            raise self.error(("deny_rules",), f"must be a JSON array, not {_kind(deny)}")
        rules = self.rules(deny, "deny_rules", Effect.DENY) + self.rules(allow, "allow_rules", Effect.ALLOW)
        audit = None
        if "audit_logging_options" in doc:
            audit = self.audit(doc["audit_logging_options"], ("audit_logging_options",))
        return Policy(rules, name=name, audit=audit)

    def rules(self, items: list[Any], key: str, effect: Effect) -> tuple[Rule, ...]:
        out: list[Rule] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            path: Path = (key, i)
            obj = self.fields(item, path, ("name", "source", "request"), required=("name",))
            name = self.string(obj["name"], (*path, "name"))
            if not name.strip():
                raise self.error((*path, "name"), "must not be empty")
            if name in seen:
                raise self.error(
                    (*path, "name"), f"rule name {name!r} is already used by {key}[{seen[name]}]; names must be unique"
                )
            seen[name] = i
            peers: PeerMatcher = AnyPeer()
            methods: MethodScope = AnyMethod()
            headers: tuple[HeaderCondition, ...] = ()
            if "source" in obj:
                src = self.fields(obj["source"], (*path, "source"), ("principals",))
                if "principals" in src:
                    peers = self.principals(src["principals"], (*path, "source", "principals"))
            if "request" in obj:
                req = self.fields(obj["request"], (*path, "request"), ("paths", "headers"))
                if "paths" in req:
                    methods = self.paths(req["paths"], (*path, "request", "paths"))
                if "headers" in req:
                    headers = self.headers(req["headers"], (*path, "request", "headers"))
            out.append(Rule(name, effect, peers, methods, headers))
        return tuple(out)

    # -- principals -------------------------------------------------------

    def principals(self, value: Any, path: Path) -> PeerMatcher:
        items = self.items(value, path, "omit 'principals' (or 'source') to match any peer")
        members = tuple(self.principal(item, (*path, i)) for i, item in enumerate(items))
        return members[0] if len(members) == 1 else AnyOf(members)

    def principal(self, value: Any, path: Path) -> PeerMatcher:
        text = self.string(value, path)
        if text == "":
            raise self.error(
                path, "an empty principal matches only callers without a certificate, which meshnode never "
                "authorizes; use '*' for any authenticated peer"
            )
        pattern = self.pattern(text, path)
        fixed = pattern.value
        if pattern.kind is PatternKind.EXACT:
            if not fixed.startswith(_SCHEME):
                raise self.error(path, f"{text!r} is not a SPIFFE ID; {_NEVER}")
            self.spiffe_id(fixed, path, text)
        elif pattern.kind is PatternKind.PREFIX:
            if fixed.startswith(_SCHEME):
                self.spiffe_prefix(fixed, path, text)
            elif not _SCHEME.startswith(fixed):
                raise self.error(path, f"{text!r} can never match: every SPIFFE ID starts with 'spiffe://'; {_NEVER}")
        return IdPattern(pattern)

    def spiffe_id(self, text: str, path: Path, shown: str) -> None:
        try:
            parse_spiffe_id(text)
        except InvalidSpiffeIdError as exc:
            raise self.error(path, f"{shown!r} is not a valid SPIFFE ID: {exc.reason}") from None

    def spiffe_prefix(self, fixed: str, path: Path, shown: str) -> None:
        rest = fixed[len(_SCHEME):]
        if "/" not in rest:
            if not _TD_CHARS.fullmatch(rest):
                raise self.error(path, f"{shown!r}: the trust domain part may hold only a-z, 0-9, '.', '-', '_'")
            if rest:
                self.warnings.append(
                    f"{self.where(path)}: {shown!r} also matches other trust domains that start with "
                    f"{rest!r} (e.g. '{rest}.evil.example'); write 'spiffe://{rest}/*' for one trust domain"
                )
            return
        head, _, tail = fixed.rpartition("/")
        self.spiffe_id(head, path, shown)
        if not _SEGMENT_CHARS.fullmatch(tail):
            raise self.error(path, f"{shown!r}: a path segment may hold only letters, digits, '.', '-', '_'")
        if tail:
            self.warnings.append(
                f"{self.where(path)}: {shown!r} is a string prefix, so it also matches '{head}/{tail}x...'; "
                f"write '{head}/{tail}/*' to match only IDs below {head}/{tail}"
            )

    # -- requests ---------------------------------------------------------

    def pattern(self, text: str, path: Path) -> StringPattern:
        try:
            return parse_pattern(text)
        except PolicyError as exc:
            raise self.error(path, exc.reason) from None

    def paths(self, value: Any, path: Path) -> MethodScope:
        items = self.items(value, path, "omit 'paths' to match any method")
        members: list[MethodScope] = []
        for i, item in enumerate(items):
            text = self.string(item, (*path, i))
            pattern = self.pattern(text, (*path, i))
            if pattern.kind is PatternKind.EXACT:
                check_method_path(text, f"{self.where((*path, i))}")
            elif pattern.kind is PatternKind.PREFIX and not pattern.value.startswith("/"):
                raise self.error(
                    (*path, i), f"path {text!r} must start with '/' (method paths are '/package.Service/Method'); "
                    f"write '/{text}'"
                )
            members.append(PathPattern(pattern))
        return members[0] if len(members) == 1 else AnyOfMethods(tuple(members))

    def headers(self, value: Any, path: Path) -> tuple[HeaderCondition, ...]:
        items = self.items(value, path, "omit 'headers' to match any request")
        out: list[HeaderCondition] = []
        for i, item in enumerate(items):
            hpath: Path = (*path, i)
            obj = self.fields(item, hpath, ("key", "values"), required=("key", "values"))
            key = self.string(obj["key"], (*hpath, "key")).lower()
            reason = _unsupported_header(key)
            if reason:
                raise self.error((*hpath, "key"), f"header {key!r} cannot be matched: {reason}")
            values = self.items(obj["values"], (*hpath, "values"), "list the values to match, or '*' for any")
            patterns = tuple(
                self.pattern(self.string(v, (*hpath, "values", j)), (*hpath, "values", j))
                for j, v in enumerate(values)
            )
            out.append(HeaderCondition(key, patterns))
        return tuple(out)

    # -- audit (A59) ------------------------------------------------------

    def audit(self, value: Any, path: Path) -> AuditCondition | None:
        obj = self.fields(value, path, ("audit_condition", "audit_loggers"))
        condition = None
        if "audit_condition" in obj:
            text = self.string(obj["audit_condition"], (*path, "audit_condition"))
            if text not in _AUDIT_CONDITIONS:
                raise self.error((*path, "audit_condition"), f"must be one of {', '.join(_AUDIT_CONDITIONS)}")
            condition = AuditCondition.parse(text)
        for i, item in enumerate(obj.get("audit_loggers", [])):
            lpath: Path = (*path, "audit_loggers", i)
            logger = self.fields(item, lpath, ("name", "config", "is_optional"), required=("name",))
            name = self.string(logger["name"], (*lpath, "name"))
            optional = logger.get("is_optional", False)
            if not isinstance(optional, bool):
                raise self.error((*lpath, "is_optional"), "must be true or false")
            if "config" in logger and not isinstance(logger["config"], dict):
                raise self.error((*lpath, "config"), "must be a JSON object")
            if name in _BUILTIN_AUDIT_LOGGERS:
                continue
            if not optional:
                raise self.error(
                    (*lpath, "name"), f"unknown audit logger {name!r}: meshnode writes audit records to the "
                    "'meshnode.audit' logger; use 'stdout_logger' or set \"is_optional\": true"
                )
            self.warnings.append(f"{self.where(lpath)}: optional audit logger {name!r} is not available; skipped")
        return condition


_NEVER = (
    "meshnode matches principals against the caller's SPIFFE ID (its only URI SAN), "
    "never DNS names or subjects, so this rule could never match"
)


def _unsupported_header(key: str) -> str:
    if not key:
        return "the key is empty"
    if key.startswith(":"):
        return "HTTP/2 pseudo-headers are not supported (A43)"
    if key.startswith("grpc-"):
        return "'grpc-' headers are reserved by gRPC (A43)"
    if key in UNSUPPORTED_HEADERS:
        return "Host and hop-by-hop headers are not supported (A43)"
    if key.endswith("-bin"):
        return "binary ('-bin') headers carry bytes and are never matched as text"
    return ""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), "a number"
    )
