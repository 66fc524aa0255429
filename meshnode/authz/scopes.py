"""Request scopes: which methods (and, for A43 rules, which headers) a rule covers.

A method is always the full gRPC path ``/package.Service/Method``. Rules
are scoped to everything (:class:`AnyMethod`), one service
(:class:`ServiceScope`, written ``pkg.Service``), one method
(:class:`MethodPath`, written ``/pkg.Service/Method``) or, in A43 files, a
wildcard path (:class:`PathPattern`).

Header conditions exist only for A43 compatibility. A rule with one makes
the decision depend on request metadata: for the callers and methods that
rule matches, the authorizer tests its headers on every call (see
:meth:`~meshnode.authz.Policy.resolve` and :mod:`meshnode.authz.authorizer`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from meshnode.authz.patterns import StringPattern
from meshnode.errors import PolicyError

__all__ = [
    "UNSUPPORTED_HEADERS",
    "AnyMethod",
    "AnyOfMethods",
    "HeaderCondition",
    "MethodPath",
    "MethodScope",
    "PathPattern",
    "ServiceScope",
    "check_method_path",
    "check_service_name",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Header keys A43 refuses: Host and hop-by-hop headers (pseudo-headers and
#: ``grpc-`` keys are refused by prefix).
UNSUPPORTED_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class MethodScope(Protocol):
    def matches(self, method: str) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AnyMethod:
    def matches(self, method: str) -> bool:
        return True

    def describe(self) -> str:
        return "any method"


@dataclass(frozen=True, slots=True)
class ServiceScope:
    service: str

    def matches(self, method: str) -> bool:
        return method.startswith("/" + self.service + "/")

    def describe(self) -> str:
        return f"service {self.service}"


@dataclass(frozen=True, slots=True)
class MethodPath:
    path: str

    def matches(self, method: str) -> bool:
        return method == self.path

    def describe(self) -> str:
        return f"method {self.path}"


@dataclass(frozen=True, slots=True)
class PathPattern:
    """An A43 ``request.paths`` entry (gRPC string wildcard on the full path)."""

    pattern: StringPattern

    def matches(self, method: str) -> bool:
        return self.pattern.matches(method)

    def describe(self) -> str:
        return f"path {str(self.pattern)!r}"


@dataclass(frozen=True, slots=True)
class AnyOfMethods:
    members: tuple[MethodScope, ...]

    def matches(self, method: str) -> bool:
        return any(m.matches(method) for m in self.members)

    def describe(self) -> str:
        if len(self.members) == 1:
            return self.members[0].describe()
        return "any of [" + ", ".join(m.describe() for m in self.members) + "]"


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    """Header ``key`` is present and matches one of ``patterns``.

    Several values of one key are joined with ``","`` first, as A43 says.
    """

    key: str
    patterns: tuple[StringPattern, ...]

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.key)
        return value is not None and any(p.matches(value) for p in self.patterns)

    def describe(self) -> str:
        return f"header {self.key!r} matches one of {[str(p) for p in self.patterns]}"


def check_service_name(name: str, where: str = "service") -> str:
    """Validate a fully qualified service name ``pkg.Service``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        hint = ""
        if isinstance(name, str) and name.startswith("/"):
            hint = "; write the service without slashes, or use method='/pkg.Service/Method' for one method"
        raise PolicyError(
            reason=f"{where}: {name!r} is not a fully qualified service name like 'pkg.Service'{hint}",
            component="authz"
        )
    return name


def check_method_path(path: str, where: str = "method") -> str:
    """Validate a full method path ``/pkg.Service/Method``."""
    if not isinstance(path, str):
        raise PolicyError(reason=f"{where}: expected a method path string, got {type(path).__name__}",
                          component="authz")
    if not path.startswith("/"):
        raise PolicyError(
            reason=f"{where}: method {path!r} must start with '/': write {'/' + path!r} "
            "(gRPC method paths are '/package.Service/Method')", component="authz"
        )
    service, slash, method = path[1:].partition("/")
    if not slash or not _NAME.fullmatch(service) or not _METHOD.fullmatch(method):
        raise PolicyError(reason=f"{where}: {path!r} is not a method path like '/package.Service/Method'",
                          component="authz")
    return path
