"""The strict SPIFFE ID validator and the injective ID -> DNS name mapping."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.errors import InvalidSpiffeIdError
from meshnode.spiffeid import dns_name_for, parse_spiffe_id, parse_trust_domain, spiffe_id_from_dns_name

VALID = [
    "spiffe://example.org",
    "spiffe://example.org/a",
    "spiffe://example.org/ns/prod/sa/api",
    "spiffe://ex_a-m.p.le/A_b.c-D/x",
    "spiffe://1.2.3.4/x",
]

INVALID = [
    ("SPIFFE://example.org/a", "must start with 'spiffe://'"),
    ("spiffe://Example.org/a", "lowercase"),
    ("http://example.org/a", "must start with 'spiffe://'"),
    ("spiffe://example.org:8080/a", "only a-z"),
    ("spiffe://user@example.org/a", "only a-z"),
    ("spiffe://example.org/a//b", "empty segments"),
    ("spiffe://example.org/a/./b", "'.' and '..'"),
    ("spiffe://example.org/a/../b", "'.' and '..'"),
    ("spiffe://example.org/a%20b", "percent-encoding"),
    ("spiffe://example.org/a?x=1", "invalid character"),
    ("spiffe://example.org/a#frag", "invalid character"),
    ("spiffe://example.org/a/", "trailing '/'"),
    ("spiffe://example.org/", "trailing '/'"),
    ("spiffe:///a", "empty"),
    ("spiffe://example.org/" + "a" * 2100, "2048 bytes"),
    ("spiffe://" + "a" * 256 + "/x", "255 bytes"),
    ("", "must start with"),
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_round_trip(value: str) -> None:
    assert str(parse_spiffe_id(value)) == value


@pytest.mark.parametrize(("value", "message"), INVALID)
def test_invalid_ids_name_the_problem(value: str, message: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        parse_spiffe_id(value)
    assert message in str(info.value)
    assert str(info.value).startswith("spiffeid: ")


def test_trust_domain_rejects_uppercase_instead_of_lowercasing() -> None:
    assert parse_trust_domain("spiffe://example.org") == "example.org"
    with pytest.raises(InvalidSpiffeIdError, match="lowercase"):
        parse_trust_domain("Example.org")


def test_dns_names_are_readable_for_plain_ids() -> None:
    assert dns_name_for("spiffe://example.org/ns/prod/sa/api") == "api.sa.prod.ns.spiffe--id.example.org"
    assert dns_name_for("spiffe://example.org") == "spiffe--id.example.org"


def test_ids_that_only_differ_in_case_or_punctuation_get_different_names() -> None:
    ids = [
        "spiffe://example.org/a/b",
        "spiffe://example.org/A/b",
        "spiffe://example.org/a.b",
        "spiffe://example.org/b/a",
        "spiffe://example.org/a-b",
        "spiffe://example.org/a--b",
        "spiffe://example.org.a/b",
        "spiffe://a.example.org/b",
        "spiffe://example.org/spiffe--id/x",
    ]
    names = [dns_name_for(i) for i in ids]
    assert len(set(names)) == len(names)


def test_ids_too_long_for_dns_have_no_name_and_say_what_to_do() -> None:
    with pytest.raises(InvalidSpiffeIdError, match='verify = "spiffe-id"'):
        dns_name_for("spiffe://example.org/" + "x" * 70)
    with pytest.raises(InvalidSpiffeIdError, match="253"):
        dns_name_for("spiffe://example.org/" + "/".join(["abcdefghij"] * 30))


_segment = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)
_td_label = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12)


@st.composite
def spiffe_ids(draw: st.DrawFn) -> str:
    td = ".".join(draw(st.lists(_td_label, min_size=1, max_size=3)))
    segments = draw(st.lists(_segment, max_size=5))
    return "spiffe://" + td + "".join("/" + s for s in segments)


@given(spiffe_ids())
def test_mapping_is_invertible_hence_injective(value: str) -> None:
    name = dns_name_for(value)
    assert str(spiffe_id_from_dns_name(name)) == value
    labels = name.split(".")
    assert all(1 <= len(label) <= 63 for label in labels)
    assert all(set(label) <= set(string.ascii_lowercase + string.digits + "-") for label in labels)
    assert all(not label.startswith("-") and not label.endswith("-") for label in labels)


@given(spiffe_ids(), spiffe_ids())
def test_distinct_ids_never_share_a_name(a: str, b: str) -> None:
    if a != b:
        assert dns_name_for(a) != dns_name_for(b)
