"""Which answers a family of wildcard patterns can give for one string of a domain.

The policy analysis (:mod:`meshnode.authz.analysis`) asks questions such
as "is there a caller that matches allow rule A and no deny rule?". Along
each dimension of a request - the caller's SPIFFE ID, the method path, one
header's value - every matcher meshnode has is a boolean combination of
four kinds of *atoms* on the whole string, the kinds of
:class:`~meshnode.authz.patterns.StringPattern`: exact, prefix, suffix and
presence (non-empty). :func:`truth_vectors` finds every combination of
atom answers (a *truth vector*: the set of atoms that hold) that at least
one string of the :class:`Domain` produces, each with one such string as
its witness. A question over that dimension then becomes a finite search
over vectors.

The answer is exact, not sampled: a breadth-first walk over the product of
three automata - a trie of the exact and prefix strings, an Aho-Corasick
automaton of the suffix strings, and the domain's own automaton (what a
valid SPIFFE ID, method path or header value looks like) - reading one
representative per class of characters that all three treat alike. The
product is finite, so the walk ends; a state budget turns a huge family
into :class:`AnalysisLimit` instead of a stall. Every witness is checked
by the domain's real validator (e.g. :func:`~meshnode.spiffeid.parse_spiffe_id`);
a witness it refuses (a SPIFFE ID over 2048 bytes) is an
:class:`AnalysisLimit` too, never a guess.
"""

from __future__ import annotations

import string
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshnode.authz.patterns import PatternKind, StringPattern
from meshnode.authz.scopes import check_method_path
from meshnode.errors import InvalidSpiffeIdError, PolicyError
from meshnode.spiffeid import SCHEME, parse_spiffe_id

__all__ = [
    "HEADER_VALUES",
    "METHOD_PATHS",
    "SPIFFE_IDS",
    "AnalysisLimit",
    "Budget",
    "Domain",
    "conjunction_witness",
    "truth_vectors",
]


class AnalysisLimit(Exception):
    """The question is too large (or falls outside the model) to answer exactly; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Budget:
    """Units of work (automaton states, search steps) an analysis may spend before it gives up."""

    def __init__(self, units: int = 400_000) -> None:
        self.left = units

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise AnalysisLimit("the policy is too large to analyse within the work budget")


@dataclass(frozen=True)
class Domain:
    """The strings one request dimension can hold, as a small automaton over characters.

    ``classes`` partition the domain's alphabet into characters ``step``
    treats alike; ``valid`` is the real validator every witness must pass;
    ``fillers`` go between a prefix and a suffix when
    :func:`conjunction_witness` guesses a string.
    """

    name: str
    classes: tuple[str, ...]
    start: int
    step: Callable[[int, str], int | None]
    accepts: Callable[[int], bool]
    valid: Callable[[str], bool]
    fillers: tuple[str, ...] = ("", "x")


# -- caller IDs: spiffe://<td>/<seg>/..., td [a-z0-9._-]+, seg [A-Za-z0-9._-]+ but not "." or "..";
#    a caller's X509-SVID has a non-root path (X509-SVID section 5.2), so a bare trust domain is no caller --

_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + "._-")
_SEG_CHARS = frozenset(string.ascii_letters + string.digits + "._-")
_TD_START, _TD, _SEG_START, _DOT1, _DOT2, _SEG = range(len(SCHEME), len(SCHEME) + 6)


def _spiffe_step(state: int, ch: str) -> int | None:
    if state < len(SCHEME):
        return state + 1 if ch == SCHEME[state] else None
    if state in (_TD_START, _TD):
        if ch in _TD_CHARS:
            return _TD
        return _SEG_START if ch == "/" and state == _TD else None
    if ch == "/":
        return _SEG_START if state == _SEG else None  # "." and ".." are not segments
    if ch not in _SEG_CHARS:
        return None
    if ch == ".":
        return {_SEG_START: _DOT1, _DOT1: _DOT2}.get(state, _SEG)
    return _SEG


def _valid_caller(text: str) -> bool:
    try:
        return bool(parse_spiffe_id(text).path)
    except InvalidSpiffeIdError:
        return False


_SCHEME_CHARS = "".join(sorted(set(SCHEME)))
SPIFFE_IDS = Domain(
    "caller SPIFFE ID",
    classes=(
        *_SCHEME_CHARS,  # each its own class: the scheme automaton reads them one by one
        ".",
        "-_",
        "".join(c for c in string.ascii_lowercase if c not in _SCHEME_CHARS),
        string.ascii_uppercase,
        string.digits,
    ),
    start=0,
    step=_spiffe_step,
    accepts=lambda state: state == _SEG,
    valid=_valid_caller,
    fillers=("", "x", "/x", "x/x", "spiffe://x.org/x", "spiffe://x.org", "spiffe://x.org/x/"),
)

# -- method paths: /<ident>(.<ident>)*/<ident>, ident [A-Za-z_][A-Za-z0-9_]* --

_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT = _IDENT_START | frozenset(string.digits)
_M_START, _M_SVC_START, _M_SVC, _M_NAME_START, _M_NAME = range(5)


def _method_step(state: int, ch: str) -> int | None:
    if state == _M_START:
        return _M_SVC_START if ch == "/" else None
    if state in (_M_SVC_START, _M_NAME_START):
        return state + 1 if ch in _IDENT_START else None
    if ch in _IDENT:
        return state
    if state == _M_SVC:
        return {".": _M_SVC_START, "/": _M_NAME_START}.get(ch)
    return None


def _valid_method(text: str) -> bool:
    try:
        check_method_path(text)
    except PolicyError:
        return False
    return True


METHOD_PATHS = Domain(
    "method path",
    classes=("/", ".", string.ascii_letters + "_", string.digits),
    start=_M_START,
    step=_method_step,
    accepts=lambda state: state == _M_NAME,
    valid=_valid_method,
    fillers=("", "x", "/x", "x/x", "/x.X/x", "/x.X/", ".X/x"),
)

# -- header values: what a gRPC client can send as ASCII metadata (repeated keys joined with ",") --

_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
HEADER_VALUES = Domain(
    "header value",
    classes=(_PRINTABLE,),
    start=0,
    step=lambda state, ch: 0 if ch in _PRINTABLE else None,
    accepts=lambda state: True,
    valid=lambda text: all(ch in _PRINTABLE for ch in text),
)


# -- the quick answer for a conjunction ------------------------------------------


def conjunction_witness(atoms: Sequence[StringPattern], domain: Domain) -> tuple[bool | None, str]:
    """Is there a string of ``domain`` for which every atom holds? Without walking an automaton.

    ``(True, witness)``, ``(False, "")`` when there is provably none, or
    ``(None, "")`` when this quick test cannot tell (ask :func:`truth_vectors`).
    """
    exact = {a.value for a in atoms if a.kind is PatternKind.EXACT}
    if len(exact) > 1:
        return False, ""
    if exact:
        [only] = exact
        ok = all(a.matches(only) for a in atoms) and domain.valid(only)
        return ok, only if ok else ""
    prefixes = sorted((a.value for a in atoms if a.kind is PatternKind.PREFIX), key=len)
    suffixes = sorted((a.value for a in atoms if a.kind is PatternKind.SUFFIX), key=len)
    if prefixes and not all(prefixes[-1].startswith(p) for p in prefixes):
        return False, ""
    if suffixes and not all(suffixes[-1].endswith(s) for s in suffixes):
        return False, ""
    head = prefixes[-1] if prefixes else ""
    tail = suffixes[-1] if suffixes else ""
    for filler in domain.fillers:
        text = head + filler + tail
        if all(a.matches(text) for a in atoms) and domain.valid(text):
            return True, text
    return None, ""


# -- the walk -------------------------------------------------------------------


class _Trie:
    """Exact and prefix atoms: which hold is known from the deepest trie node the string reached."""

    def __init__(self, atoms: Sequence[StringPattern]) -> None:
        self.children: list[dict[str, int]] = [{}]
        exact: list[set[int]] = [set()]
        prefix: list[set[int]] = [set()]
        parent = [0]
        for i, atom in enumerate(atoms):
            if atom.kind not in (PatternKind.EXACT, PatternKind.PREFIX):
                continue
            node = 0
            for ch in atom.value:
                nxt = self.children[node].get(ch)
                if nxt is None:
                    nxt = len(self.children)
                    self.children[node][ch] = nxt
                    self.children.append({})
                    exact.append(set())
                    prefix.append(set())
                    parent.append(node)
                node = nxt
            (exact if atom.kind is PatternKind.EXACT else prefix)[node].add(i)
        self.exact = [frozenset(e) for e in exact]
        self.on_path: list[frozenset[int]] = []
        for node, here in enumerate(prefix):  # a parent's id is always smaller than its child's
            self.on_path.append((self.on_path[parent[node]] if node else frozenset()) | here)


class _Suffixes:
    """Suffix atoms: an Aho-Corasick automaton; a state's output holds the suffixes the string ends with."""

    def __init__(self, atoms: Sequence[StringPattern]) -> None:
        children: list[dict[str, int]] = [{}]
        here: list[set[int]] = [set()]
        for i, atom in enumerate(atoms):
            if atom.kind is not PatternKind.SUFFIX:
                continue
            node = 0
            for ch in atom.value:
                nxt = children[node].get(ch)
                if nxt is None:
                    nxt = len(children)
                    children[node][ch] = nxt
                    children.append({})
                    here.append(set())
                node = nxt
            here[node].add(i)
        self.children = children
        self.fail = [0] * len(children)
        self.out: list[frozenset[int]] = [frozenset()] * len(children)
        self.out[0] = frozenset(here[0])
        queue = deque(children[0].values())
        while queue:
            node = queue.popleft()
            self.out[node] = frozenset(here[node]) | self.out[self.fail[node]]
            for ch, nxt in children[node].items():
                self.fail[nxt] = self._goto(self.fail[node], ch)
                queue.append(nxt)
        self._memo: dict[tuple[int, str], int] = {}

    def _goto(self, node: int, ch: str) -> int:
        while node and ch not in self.children[node]:
            node = self.fail[node]
        return self.children[node].get(ch, 0)

    def step(self, node: int, ch: str) -> int:
        key = (node, ch)
        nxt = self._memo.get(key)
        if nxt is None:
            nxt = self._memo[key] = self._goto(node, ch)
        return nxt


def _alphabet(atoms: Sequence[StringPattern], domain: Domain) -> list[str]:
    """Every domain character some atom names, plus one unnamed character per class (if any is left)."""
    named = {ch for atom in atoms for ch in atom.value}
    out: list[str] = []
    for cls in domain.classes:
        out.extend(ch for ch in cls if ch in named)
        fresh = next((ch for ch in cls if ch not in named), None)
        if fresh is not None:
            out.append(fresh)
    return out


def truth_vectors(
    atoms: Sequence[StringPattern], domain: Domain, budget: Budget | None = None
) -> dict[frozenset[int], str]:
    """Every set of atom indices that holds together for some string of ``domain``, with that string.

    Raises :class:`AnalysisLimit` when the walk would exhaust ``budget``
    (one unit per state), or when the domain's validator refuses a witness.
    """
    budget = budget or Budget()
    trie, suffixes = _Trie(atoms), _Suffixes(atoms)
    presence = frozenset(i for i, a in enumerate(atoms) if a.kind is PatternKind.PRESENCE)
    alphabet = _alphabet(atoms, domain)
    start = (0, True, 0, False, domain.start)
    seen: dict[tuple[int, bool, int, bool, int], str] = {start: ""}
    queue = deque([start])
    found: dict[frozenset[int], str] = {}
    while queue:
        state = queue.popleft()
        text = seen[state]
        node, on_trie, ac, nonempty, ds = state
        if domain.accepts(ds):
            vector = trie.on_path[node] | suffixes.out[ac]
            if on_trie:
                vector |= trie.exact[node]
            if nonempty:
                vector |= presence
            found.setdefault(vector, text)
        for ch in alphabet:
            nds = domain.step(ds, ch)
            if nds is None:
                continue
            child = trie.children[node].get(ch) if on_trie else None
            nxt = (node if child is None else child, child is not None, suffixes.step(ac, ch), True, nds)
            if nxt not in seen:
                budget.spend(1)
                seen[nxt] = text + ch
                queue.append(nxt)
    for text in found.values():
        if not domain.valid(text):
            raise AnalysisLimit(f"{text[:60]!r} fits the {domain.name} model but not the {domain.name} rules")
    return found
