"""Where things are in a JSON text: line and column of every value and member key.

:mod:`json` gives positions only for syntax errors. Policy errors must say
*where* a bad field is too, so after :func:`json.loads` accepted a text,
:func:`json_locations` walks its tokens once and records the position of
each object member (at its key) and each array element. It also reports
duplicate keys, which :mod:`json` silently collapses (the last one wins,
hiding the first from a reviewer).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Mapping

__all__ = ["Locations", "Path", "json_locations", "render_path"]

Path = tuple[str | int, ...]

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_NEWLINE = re.compile("\n")
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))')


class Locations(Mapping[Path, tuple[int, int]]):
    """Path -> (line, column), each computed when asked: a valid policy file never asks."""

    __slots__ = ("_line_starts", "_offsets")

    def __init__(self, offsets: dict[Path, int], line_starts: list[int]) -> None:
        self._offsets = offsets
        self._line_starts = line_starts

    def __getitem__(self, path: Path) -> tuple[int, int]:
        offset = self._offsets[path]
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def __contains__(self, path: object) -> bool:
        return path in self._offsets

    def __iter__(self) -> Iterator[Path]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)


class _Frame:
    __slots__ = ("expect_key", "is_object", "key", "keys", "path")

    def __init__(self, path: Path, is_object: bool) -> None:
        self.path = path
        self.is_object = is_object
        self.key: str | int = 0
        self.expect_key = is_object
        self.keys: set[str] = set()


def json_locations(text: str) -> tuple[Locations, list[Path]]:
    """(positions, duplicate member paths) for ``text``, which must be valid JSON."""
    locations: dict[Path, int] = {}  # offsets; Locations turns one into (line, column) when asked
    duplicates: list[Path] = []
    stack: list[_Frame] = []
    for m in _TOKEN.finditer(text):
        assert m.lastindex is not None
        start = m.start(m.lastindex)
        string, punct = m.group(1), m.group(2)
        top = stack[-1] if stack else None
        if top is not None and top.expect_key and string is not None:
            key = string[1:-1] if "\\" not in string else json.loads(string)  # no escapes: the text is the key
            top.key, top.expect_key = key, False
            if key in top.keys:
                duplicates.append((*top.path, key))
            else:
                top.keys.add(key)
                locations[(*top.path, key)] = start
            continue
        if punct == ":":
            continue
        if punct == ",":
            if top is not None and top.is_object:
                top.expect_key = True
            elif top is not None:
                top.key = int(top.key) + 1
            continue
        if punct in ("}", "]"):
            stack.pop()
            continue
        path: Path = (*top.path, top.key) if top is not None else ()
        if top is None or not top.is_object:
            locations.setdefault(path, start)
        if punct == "{":
            stack.append(_Frame(path, True))
        elif punct == "[":
            stack.append(_Frame(path, False))
    return Locations(locations, [0] + [m.end() for m in _NEWLINE.finditer(text)]), duplicates


def render_path(path: Path) -> str:
    """``("allow_rules", 1, "source")`` -> ``allow_rules[1].source``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN.fullmatch(part):  # a key with spaces, control characters...: quoted, one line
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"
