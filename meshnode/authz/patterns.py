"""Wildcard strings of gRPC authorization policies (gRFC A43).

A pattern is one of four forms, exactly as gRPC reads them:

* ``"*"``     presence: any non-empty value;
* ``"abc*"``  prefix: ``abc`` and anything starting with it;
* ``"*abc"``  suffix: ``abc`` and anything ending with it;
* ``"abc"``   exact.

gRPC treats any other ``*`` as a literal character, so ``"a*b"`` would only
ever match the three characters ``a*b``. No SPIFFE ID, method path or
sensible header value contains a ``*``, so such a pattern is nearly always
a mistake: meshnode refuses it (and ``"*abc*"``, ``"**"``) instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshnode.errors import PolicyError

__all__ = ["PatternKind", "StringPattern", "parse_pattern"]


class PatternKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class StringPattern:
    """A parsed wildcard pattern; ``value`` is the fixed part (no ``*``)."""

    kind: PatternKind
    value: str

    def matches(self, text: str) -> bool:
        if self.kind is PatternKind.EXACT:
            return text == self.value
        if self.kind is PatternKind.PREFIX:
            return text.startswith(self.value)
        if self.kind is PatternKind.SUFFIX:
            return text.endswith(self.value)
        return bool(text)

    def __str__(self) -> str:
        if self.kind is PatternKind.EXACT:
            return self.value
        if self.kind is PatternKind.PREFIX:
            return self.value + "*"
        if self.kind is PatternKind.SUFFIX:
            return "*" + self.value
        return "*"


def parse_pattern(text: str) -> StringPattern:
    """Parse an A43 wildcard pattern; raises ValueError saying what is wrong.

    The caller adds the location to the message.
    """
    if text == "*":
        return StringPattern(PatternKind.PRESENCE, "")
    if text.startswith("*"):
        kind, fixed = PatternKind.SUFFIX, text[1:]
    elif text.endswith("*"):
        kind, fixed = PatternKind.PREFIX, text[:-1]
    else:
        kind, fixed = PatternKind.EXACT, text
    if "*" in fixed:
        raise PolicyError(
            reason=f"{text!r} has a '*' that is not a single leading or trailing wildcard; "
            "gRPC supports only 'abc*' (prefix), '*abc' (suffix) and '*' (any)",
            component="authz", value=text,
        )
    return StringPattern(kind, fixed)
