"""What a set of rules can do at all, decided from the compiled matchers, never from their spelling.

A deny rule written ``principals: ["spiffe://*"]``, ``paths: ["/*"]``,
``"*"``, or ``spiffe://example.org`` when that is the only accepted trust
domain matches every call alike; so do two deny rules that split the
callers between them; an allow list whose principals all lie in trust
domains the node does not accept allows nothing. So the question is asked
of the matchers: :meth:`Analyzer.find` looks for a request that an allow
rule matches and no deny rule does (with no allow rule: any request no
deny rule matches; none means the deny rules match everything).

The requests considered: callers are the X509-SVID IDs of the accepted
trust domains (any trust domain when none are given; an SVID's ID has a
non-root path), methods the valid ``/package.Service/Method`` paths, and
each header absent or any ASCII value (repeated keys are joined, so one
value stands for all).

How: :mod:`~meshnode.authz.compiler` turns a rule's peers and methods into formulas
over string atoms, its header conditions to one formula per key. A few
concrete probe requests are tried first, against the real rules. When they
do not settle it, :func:`~meshnode.authz.stringsets.truth_vectors` lists
every combination of atom answers some caller (method, header value) gives,
and the search runs over those finite lists, so the answer is exact. Every
example found is put to the real matchers again before it is believed. A
matcher type the analysis does not know (a custom
:class:`~meshnode.authz.PeerMatcher`), or a question larger than the work
budget, raises :class:`~meshnode.authz.stringsets.AnalysisLimit`:
:meth:`Analyzer.answer` turns that into :data:`Answer.UNKNOWN` with the
reason. Callers warn then; they never guess.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from meshnode.authz.compiler import Compiled, Compiler, Conditions, RuleShape
from meshnode.authz.formulas import TRUE, AtomTable, Formula, Vector, atoms_of, conj, disj, dnf
from meshnode.authz.patterns import PatternKind
from meshnode.authz.stringsets import AnalysisLimit, Budget, conjunction_witness, truth_vectors
from meshnode.spiffeid import SCHEME, SpiffeID, parse_spiffe_id

__all__ = ["Analyzer", "Answer", "Example"]

Choice = tuple[Vector, str] | None  # one header's truth vector and value; None: the header is absent


class Answer(enum.Enum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Example:
    """A request that shows an answer; the real matchers have agreed with it."""

    peer: SpiffeID
    method: str
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _matches(rule: RuleShape, example: Example) -> bool:
    return (
        rule.methods.matches(example.method) and rule.peers.matches(example.peer)
        and all(h.matches(example.headers) for h in rule.headers)
    )


class Analyzer:
    """Answers questions about rules; one instance per policy check shares its atoms, memos and budget.

    ``accepted``: the trust domains whose callers the node accepts (None:
    any). ``budget``: work units (:class:`~meshnode.authz.stringsets.Budget`)
    before questions raise :class:`~meshnode.authz.stringsets.AnalysisLimit`.
    """

    def __init__(self, accepted: Iterable[str] | None = None, *, budget: int = 400_000) -> None:
        self.accepted = None if accepted is None else frozenset(accepted)
        self._budget = Budget(budget)
        self._c = Compiler()
        self._compiled: dict[int, Compiled] = {}
        self._vectors: dict[tuple[object, ...], list[tuple[Vector, str]]] = {}
        self._witnesses: dict[tuple[object, ...], str | None] = {}
        self._callers = TRUE if self.accepted is None else disj(self._c.trust_domain(t) for t in sorted(self.accepted))

    def compile(self, rule: RuleShape) -> Compiled:
        done = self._compiled.get(id(rule))
        if done is None or done.rule is not rule:
            done = self._compiled[id(rule)] = self._c.rule(rule)
        return done

    # -- one dimension at a time ------------------------------------------------

    def vectors(self, table: AtomTable, must: Formula, others: Sequence[Formula]) -> list[tuple[Vector, str]]:
        """Truth vectors over the atoms of ``must`` and ``others`` of the strings that satisfy ``must``,
        each with one such string."""
        key = (id(table), must, tuple(others))
        hit = self._vectors.get(key)
        if hit is not None:
            return hit
        ids = atoms_of(must)
        for f in others:
            atoms_of(f, ids)
        order = sorted(ids)
        values = table.finite(must)
        out: list[tuple[Vector, str]] = []
        if values is not None:  # must pins the string to a few exact values: look at each
            self._budget.spend(len(values) * (len(order) + 1))
            for value in sorted(values):
                vector = frozenset(i for i in order if table.atoms[i].matches(value))
                if table.domain.valid(value) and must.holds(vector):
                    out.append((vector, value))
        else:
            found = truth_vectors([table.atoms[i] for i in order], table.domain, self._budget)
            for local, witness in found.items():
                vector = frozenset(order[j] for j in local)
                if must.holds(vector):
                    out.append((vector, witness))
        self._vectors[key] = out
        return out

    def witness(self, table: AtomTable, f: Formula) -> str | None:
        """A string of the table's domain that satisfies ``f``; None when there is none."""
        key = (id(table), f)
        if key not in self._witnesses:
            known, text = self._quick(table, f)
            if known is None:
                found = self.vectors(table, f, ())
                known, text = (True, found[0][1]) if found else (False, "")
            self._witnesses[key] = text if known else None
        return self._witnesses[key]

    def _quick(self, table: AtomTable, f: Formula) -> tuple[bool | None, str]:
        """:func:`~meshnode.authz.stringsets.conjunction_witness` over ``f`` in disjunctive normal form."""
        terms = dnf(f)
        if terms is None:
            return None, ""
        unknown = False
        for term in terms:
            self._budget.spend(1)
            known, text = conjunction_witness([table.atoms[i] for i in sorted(term)], table.domain)
            if known:
                return True, text
            unknown = unknown or known is None
        return (None if unknown else False), ""

    # -- whole requests -----------------------------------------------------------

    def _wanted(self, a: Compiled | None, method: str | None) -> tuple[Formula, Formula]:
        want_peer = conj((self._callers, a.peer if a else TRUE))
        want_method = a.method if a else TRUE
        if method is not None:
            want_method = conj((want_method, self._c.methods.atom(PatternKind.EXACT, method)))
        return want_peer, want_method

    def relevant(
        self, allow: RuleShape | None, denies: Sequence[RuleShape], *, method: str | None = None
    ) -> list[Compiled]:
        """The deny rules that could match some request ``allow`` (None: any request) matches."""
        want_peer, want_method = self._wanted(self.compile(allow) if allow is not None else None, method)
        return self._overlapping(want_peer, want_method, denies)

    def _overlapping(self, want_peer: Formula, want_method: Formula, denies: Sequence[RuleShape]) -> list[Compiled]:
        return [
            d for d in (self.compile(r) for r in denies)
            if d.satisfiable and self.witness(self._c.peers, conj((want_peer, d.peer))) is not None
            and self.witness(self._c.methods, conj((want_method, d.method))) is not None
        ]

    def find(
        self, allow: RuleShape | None, denies: Sequence[RuleShape], *, method: str | None = None
    ) -> Example | None:
        """A request of an accepted caller that ``allow`` matches (any request when None) and no deny
        rule matches, limited to ``method`` when given; None when there is none."""
        a = self.compile(allow) if allow is not None else None
        if a is not None and not a.satisfiable:
            return None
        want_peer, want_method = self._wanted(a, method)
        seed = self._header_seed(a.headers if a else ())
        if seed is None or self.witness(self._c.peers, want_peer) is None:
            return None  # no accepted caller (or no header value) fits the rule, whatever the deny rules say
        if self.witness(self._c.methods, want_method) is None:
            return None
        for example in self._probes(want_peer, want_method, seed):
            self._budget.spend(1 + len(denies))
            if not any(_matches(d, example) for d in denies):
                return self._checked(allow, denies, example)
        return self._search(allow, a, denies, want_peer, want_method)

    def _search(
        self, allow: RuleShape | None, a: Compiled | None, denies: Sequence[RuleShape],
        want_peer: Formula, want_method: Formula,
    ) -> Example | None:
        """The exact search: every caller vector x every method vector x the header search."""
        relevant = self._overlapping(want_peer, want_method, denies)
        for pvec, pwitness in self.vectors(self._c.peers, want_peer, [d.peer for d in relevant]):
            by_peer = [d for d in relevant if d.peer.holds(pvec)]
            for mvec, mwitness in self.vectors(self._c.methods, want_method, [d.method for d in by_peer]):
                self._budget.spend(1 + len(by_peer))
                hit = [d for d in by_peer if d.method.holds(mvec)]
                if any(not d.headers for d in hit):
                    continue
                headers = self._find_headers(a.headers if a else (), [d.headers for d in hit])
                if headers is not None:
                    return self._checked(allow, denies, Example(parse_spiffe_id(pwitness), mwitness, headers))
        return None

    def _header_seed(self, wanted: Conditions) -> Mapping[str, str] | None:
        """Values for just the keys ``wanted`` names, satisfying its conditions (None: impossible)."""
        out: dict[str, str] = {}
        for key in sorted({k for k, _ in wanted}):
            value = self.witness(self._c.headers[key], conj(f for k, f in wanted if k == key))
            if value is None:
                return None
            out[key] = value
        return MappingProxyType(out)

    def _probes(self, want_peer: Formula, want_method: Formula, headers: Mapping[str, str]) -> list[Example]:
        """A few concrete requests the wanted formulas accept, to try against the real rules first."""
        peers: list[str | None] = [self.witness(self._c.peers, want_peer)]
        for td in sorted(self.accepted or ("example.org",))[:3]:
            peers += [f"{SCHEME}{td}/meshnode-analysis/probe", f"{SCHEME}{td}/Zq9"]
        methods = [self.witness(self._c.methods, want_method), "/meshnode.analysis.Probe/Check", "/zq9.Z/Zq9"]
        fit_peers = [p for p in dict.fromkeys(peers) if p is not None and self._c.peers.fits(want_peer, p)]
        fit_methods = [m for m in dict.fromkeys(methods) if m is not None and self._c.methods.fits(want_method, m)]
        return [Example(parse_spiffe_id(p), m, headers) for p in fit_peers[:3] for m in fit_methods[:3]]

    def _find_headers(self, wanted: Conditions, denied: Sequence[Conditions]) -> Mapping[str, str] | None:
        """Header values that satisfy every wanted condition and break at least one condition of each
        deny rule; None when there are none."""
        keys = sorted({k for k, _ in wanted} | {k for conditions in denied for k, _ in conditions})
        choices: list[list[Choice]] = []
        for key in keys:
            must = conj(f for k, f in wanted if k == key)
            others = [f for conditions in denied for k, f in conditions if k == key]
            present: list[Choice] = list(self.vectors(self._c.headers[key], must, others))
            choices.append(present if any(k == key for k, _ in wanted) else [None, *present])
        assignment: dict[str, Choice] = {}

        def holds(key: str, f: Formula) -> bool:
            got = assignment[key]
            return got is not None and f.holds(got[0])

        def search(i: int) -> bool:
            if i == len(keys):
                return all(any(not holds(k, f) for k, f in conditions) for conditions in denied)
            for choice in choices[i]:
                self._budget.spend(1)
                assignment[keys[i]] = choice
                if search(i + 1):
                    return True
            return False

        if not search(0):
            return None
        return MappingProxyType({k: v[1] for k, v in assignment.items() if v is not None})

    def _checked(self, allow: RuleShape | None, denies: Sequence[RuleShape], example: Example) -> Example:
        """Ask the real matchers about the example; a disagreement is a limit of the model, not a guess."""
        fine = (allow is None or _matches(allow, example)) and not any(_matches(d, example) for d in denies)
        if self.accepted is not None:
            fine = fine and example.peer.trust_domain in self.accepted
        if not fine:
            raise AnalysisLimit(f"the example {example.peer} calling {example.method} did not check out")
        return example

    # -- for callers ----------------------------------------------------------------

    def answer(
        self, allow: RuleShape | None, denies: Sequence[RuleShape], *, method: str | None = None
    ) -> tuple[Answer, Example | None, str]:
        """:meth:`find` as (answer, example, the reason when unknown)."""
        try:
            example = self.find(allow, denies, method=method)
        except AnalysisLimit as exc:
            return Answer.UNKNOWN, None, exc.reason
        return (Answer.YES, example, "") if example is not None else (Answer.NO, None, "")

    def overlapping(
        self, rule: RuleShape | None, denies: Sequence[RuleShape], *, method: str | None = None
    ) -> list[str]:
        """Names of the deny rules that could match a request ``rule`` (None: any) matches (for messages)."""
        try:
            return [d.rule.name for d in self.relevant(rule, denies, method=method)]
        except AnalysisLimit:
            return []
