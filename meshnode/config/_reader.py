"""Strict TOML reading shared by the node and agent configs.

Every key is read through a :class:`Section`, which knows where it is
(``peers.beta.address`` in ``node.toml``) so errors can name the exact key,
and which refuses keys nobody read (typos fail loudly, with a suggestion).

Every number must be finite (TOML allows ``nan`` and ``inf``) and, where the
reader gives one, within ``minimum``..``maximum``; no string may hold a NUL
character. A file nested too deeply to parse is an error like any other:
whatever the file holds, reading it ends in a value or a ConfigError.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from meshnode.config.duration import DURATION_HELP, parse_duration
from meshnode.errors import ConfigError

__all__ = ["MISSING", "Section", "load_toml", "number_text", "printable", "resolve_path", "show"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def load_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a TOML file; errors name the file and, for syntax errors, the line."""
    p = Path(path)
    try:
        return _load_toml(p, what)
    except ConfigError as exc:
        raise ConfigError(printable(str(exc)), reason=printable(exc.reason), path=str(p)) from None


def _load_toml(p: Path, what: str) -> dict[str, Any]:
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what}: config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read config file {p}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: config file {p} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{what}: {p} is nested too deeply to be a configuration file") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer too long to convert
        raise ConfigError(f"{what}: {p} is not valid TOML: {exc}") from None


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x00``...): messages stay one line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about untrusted values."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long for repr()
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9._-]+")


def number_text(value: float) -> str:
    """``2`` and ``2.0`` as "2", ``0.1`` as "0.1": limits read as the documentation writes them."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def resolve_path(value: str, base: Path) -> Path:
    """``value`` as a path, ``~`` expanded, relative to ``base``; ValueError if ``~user`` names nobody."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # "~nosuchuser/...": pathlib cannot find that home directory
        raise ConfigError(reason=f"cannot expand {show(value.split('/', 1)[0])}: no such user's home directory",
                          component="config", value=value) from None
    return p if p.is_absolute() else base / p


class Section:
    """One TOML table, read key by key; :meth:`done` rejects unknown keys."""

    def __init__(self, data: Mapping[str, Any], where: str, source: str, what: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{what}: {source}: '{where}' must be a table")
        self._data = data
        self._where = where
        self._source = source
        self._what = what
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        shown = key if _PLAIN_KEY.fullmatch(key) else show(key)  # never a control character in a message
        return f"{self._where}.{shown}" if self._where else shown

    def error(self, key: str, message: str) -> ConfigError:
        """``<what>: <file>: '<key>' <message>``, with ``key``, ``path`` and ``reason`` (``message``) as fields."""
        return ConfigError(
            printable(f"{self._what}: {self._source}: '{self.path(key)}' {message}"),
            reason=printable(message), key=self.path(key), path=self._source,
        )

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str, default: Any) -> Any:
        self._seen.add(key)
        if key not in self._data:
            if default is MISSING:
                raise self.error(key, "is required")
            return default
        value = self._data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"must be {kind_name}, not a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"must be {kind_name}, not {type(value).__name__} {show(value)}")
        return value

    def string(self, key: str, default: Any = MISSING) -> Any:
        value = self._get(key, str, "a string", default)
        if isinstance(value, str) and not value.strip() and default is MISSING:
            raise self.error(key, "must not be empty")
        if isinstance(value, str) and "\0" in value:
            raise self.error(key, "must not contain a NUL character (\\u0000)")
        return value

    def integer(
        self, key: str, default: Any = MISSING, *, minimum: int | None = None, maximum: int | None = None
    ) -> Any:
        value = self._get(key, int, "an integer", default)
        if isinstance(value, int) and key in self._data:
            self._check_range(key, value, minimum, maximum)
        return value

    def number(
        self, key: str, default: Any = MISSING, *, minimum: float | None = None, maximum: float | None = None
    ) -> Any:
        value = self._get(key, (int, float), "a number", default)
        if not isinstance(value, (int, float)):
            return value
        if key in self._data:
            if isinstance(value, float) and not math.isfinite(value):
                raise self.error(key, f"must be a finite number, not {value}")
            self._check_range(key, value, minimum, maximum)
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range, where no maximum was given
            raise self.error(key, f"is too large: {show(value)}") from None

    def duration(
        self,
        key: str,
        default: Any = MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        whole: bool = False,
    ) -> Any:
        """Seconds, from a number or a string such as ``"30s"``, ``"5m"``, ``"1h30m"``
        (:mod:`meshnode.config.duration`); ``whole``: a whole number of seconds (returned as int)."""
        self._seen.add(key)
        if key not in self._data or not isinstance(self._data[key], str):
            if whole:
                value = self._get(key, int, "a whole number of seconds or a duration such as \"1h\"", default)
                if isinstance(value, int) and key in self._data:
                    self._check_range(key, value, minimum, maximum)
                return value
            return self.number(key, default, minimum=minimum, maximum=maximum)
        text = self.string(key)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise self.error(key, f"{exc}: {show(text)} (write {DURATION_HELP})") from None
        if whole and not seconds.is_integer():
            raise self.error(key, f"must be a whole number of seconds, not {show(text)}")
        self._check_range(key, seconds, minimum, maximum)
        return int(seconds) if whole else seconds

    def _check_range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {number_text(minimum)}, not {show(value)}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {number_text(maximum)}, not {show(value)}")

    def file_path(self, key: str, base: Path, default: Any = MISSING) -> Any:
        """A path, relative to ``base`` unless absolute; ``default`` (e.g. None) when the key is absent."""
        value = self.string(key, default)
        if not isinstance(value, str):
            return value
        try:
            return resolve_path(value, base)
        except ConfigError as exc:
            raise self.error(key, exc.reason) from None

    def boolean(self, key: str, default: Any = MISSING) -> Any:
        return self._get(key, bool, "true or false", default)

    def strings(self, key: str, default: Any = MISSING) -> Any:
        value = self._get(key, list, "a list of strings", default)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise self.error(key, f"item {i} must be a string, not {show(item)}")
                if "\0" in item:
                    raise self.error(key, f"item {i} must not contain a NUL character (\\u0000)")
            return tuple(value)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = MISSING) -> Any:
        value = self.string(key, default)
        if value is not default and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}; got {show(value)}")
        return value

    def section(self, key: str, *, required: bool = False) -> Section:
        self._seen.add(key)
        if key not in self._data:
            if required:
                raise self.error(key, "is required (a table)")
            return Section({}, self.path(key), self._source, self._what)
        return Section(self._data[key], self.path(key), self._source, self._what)

    def sections(self, key: str) -> dict[str, Section]:
        """A table of tables (``[peers.NAME]``), by name."""
        table = self.section(key)
        out: dict[str, Section] = {}
        for name in list(table._data):
            out[name] = table.section(name)
        table.done()
        return out

    def section_list(self, key: str) -> list[Section]:
        """An array of tables (``[[entries]]``)."""
        self._seen.add(key)
        value = self._data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, "must be an array of tables ([[...]])")
        return [Section(item, f"{self.path(key)}[{i}]", self._source, self._what) for i, item in enumerate(value)]

    def done(self) -> None:
        """Refuse any key that was not read."""
        for key in self._data:
            if key not in self._seen:
                close = difflib.get_close_matches(key, sorted(self._seen), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                known = ", ".join(sorted(self._seen)) or "none"
                raise self.error(key, f"is not a known key (known here: {known}){hint}")
