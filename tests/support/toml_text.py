"""TOML text from Python values, including what a hostile file may hold (nan, inf, huge integers,
control characters, nested tables), for fuzzing the config readers with hypothesis."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import hypothesis.strategies as st

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key) else _string(key)


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {value_text(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def document(tables: Mapping[str, Any]) -> str:
    """Top-level keys first, then one ``[table]`` per mapping value (``[[name]]`` for lists of tables)."""
    lines = [f"{_key(k)} = {value_text(v)}" for k, v in tables.items() if not _is_table(v) and not _is_tables(v)]
    for name, table in tables.items():
        if _is_table(table):
            lines.append(f"[{_key(name)}]")
            lines.extend(f"{_key(k)} = {value_text(v)}" for k, v in table.items())
        elif _is_tables(table):
            for item in table:
                lines.append(f"[[{_key(name)}]]")
                lines.extend(f"{_key(k)} = {value_text(v)}" for k, v in item.items())
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


#: numbers a hostile or careless file may hold
NUMBERS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, 2, 2**31, 2**32 - 1, 2**32, 2**40, 2**63 - 1, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 0.0, 0.05, 1e-300]),
)
#: strings: printable, unicode digits ('²', fullwidth) and letters, control characters, NUL
STRINGS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\u00b2", "127.0.0.1:\u00b2", "127.0.0.1:\uff17\uff10", "[::1]:7001",
                     "\u00e4:1", "~nosuchuser/x", "spiffe://example.org/a", "spiffe://", "/", "..", "a:b:c", "x" * 300,
                     "unix:///tmp/x.sock"]),
)
SCALARS = st.one_of(NUMBERS, STRINGS, st.booleans())
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A table using known ``keys`` (and sometimes an unknown one), each with any value."""
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), VALUES, max_size=len(keys))
