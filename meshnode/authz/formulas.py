"""Boolean formulas over string atoms: what the policy analysis compiles matchers into.

An atom is one :class:`~meshnode.authz.patterns.StringPattern` (exact,
prefix, suffix or presence) interned in an :class:`AtomTable`, one table
per request dimension (callers, methods, each header key). A formula is
:class:`Atom`, :class:`Conj` (all of), :class:`Disj` (any of) or
:class:`Neg`; :data:`TRUE` and :data:`FALSE` are the empty conjunction and
disjunction. A formula is evaluated against a *truth vector*: the set of
atom ids that hold for one string. Formulas are hashable values, so the
analysis can memoise its answers by them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshnode.authz.patterns import PatternKind, StringPattern
from meshnode.authz.stringsets import Domain

__all__ = [
    "FALSE",
    "TRUE",
    "Atom",
    "AtomTable",
    "Conj",
    "Disj",
    "Formula",
    "Neg",
    "Vector",
    "atoms_of",
    "conj",
    "disj",
    "dnf",
    "neg",
]

Vector = frozenset[int]


@dataclass(frozen=True, slots=True)
class Atom:
    id: int

    def holds(self, vector: Vector) -> bool:
        return self.id in vector


@dataclass(frozen=True, slots=True)
class Conj:
    parts: tuple[Formula, ...]

    def holds(self, vector: Vector) -> bool:
        return all(p.holds(vector) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Disj:
    parts: tuple[Formula, ...]

    def holds(self, vector: Vector) -> bool:
        return any(p.holds(vector) for p in self.parts)


@dataclass(frozen=True, slots=True)
class Neg:
    part: Formula

    def holds(self, vector: Vector) -> bool:
        return not self.part.holds(vector)


Formula = Atom | Conj | Disj | Neg
TRUE: Formula = Conj(())
FALSE: Formula = Disj(())


def conj(parts: Iterable[Formula]) -> Formula:
    kept = tuple(p for p in parts if p != TRUE)
    if FALSE in kept:
        return FALSE
    return kept[0] if len(kept) == 1 else Conj(kept)


def disj(parts: Iterable[Formula]) -> Formula:
    kept = tuple(p for p in parts if p != FALSE)
    if TRUE in kept:
        return TRUE
    return kept[0] if len(kept) == 1 else Disj(kept)


def neg(part: Formula) -> Formula:
    return FALSE if part == TRUE else TRUE if part == FALSE else Neg(part)


def atoms_of(f: Formula, out: set[int] | None = None) -> set[int]:
    out = set() if out is None else out
    if isinstance(f, Atom):
        out.add(f.id)
    elif isinstance(f, Neg):
        atoms_of(f.part, out)
    else:
        for p in f.parts:
            atoms_of(p, out)
    return out


def dnf(f: Formula, limit: int = 64) -> list[frozenset[int]] | None:
    """``f`` as a disjunction of conjunctions of atoms; None when it negates or grows past ``limit``."""
    if isinstance(f, Atom):
        return [frozenset({f.id})]
    if isinstance(f, Neg):
        return None
    parts = [dnf(p, limit) for p in f.parts]
    if isinstance(f, Disj):
        out: list[frozenset[int]] = []
        for part in parts:
            if part is None:
                return None
            out += part
    else:
        out = [frozenset()]
        for part in parts:
            if part is None:
                return None
            out = [x | y for x in out for y in part]
            if len(out) > limit:
                return None
    return out if len(out) <= limit else None


class AtomTable:
    """The atoms of one dimension (callers, methods, or one header's values), interned by pattern."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.atoms: list[StringPattern] = []
        self._ids: dict[StringPattern, int] = {}

    def atom(self, kind: PatternKind, value: str) -> Formula:
        pattern = StringPattern(kind, value)
        i = self._ids.get(pattern)
        if i is None:
            i = self._ids[pattern] = len(self.atoms)
            self.atoms.append(pattern)
        return Atom(i)

    def vector(self, f: Formula, text: str) -> Vector:
        """The atoms of ``f`` that hold for ``text``."""
        return frozenset(i for i in atoms_of(f) if self.atoms[i].matches(text))

    def fits(self, f: Formula, text: str) -> bool:
        """``text`` is a string of the domain and satisfies ``f``."""
        return self.domain.valid(text) and f.holds(self.vector(f, text))

    def finite(self, f: Formula) -> frozenset[str] | None:
        """The strings ``f`` can hold for, when ``f`` pins them to exact values; None when unbounded."""
        if isinstance(f, Atom):
            pattern = self.atoms[f.id]
            return frozenset({pattern.value}) if pattern.kind is PatternKind.EXACT else None
        if isinstance(f, Neg):
            return None
        sets = [self.finite(p) for p in f.parts]
        if isinstance(f, Disj):
            out: frozenset[str] = frozenset()
            for s in sets:
                if s is None:
                    return None
                out |= s
            return out
        bounded = [s for s in sets if s is not None]
        return min(bounded, key=len) if bounded else None
