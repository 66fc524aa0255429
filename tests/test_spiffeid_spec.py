"""The SPIFFE ID spec, section 2, rule by rule, against meshnode's one parser and its policy readers.

Vectors written from the spec's text (not from any implementation's tests):
2.1 scheme ``spiffe``, lowercase; 2.2 trust domain: ``a-z 0-9 . - _``, no port,
no userinfo, lowercase; 2.3 path: ``/``-separated segments of
``a-z A-Z 0-9 . - _``, no empty, ``.`` or ``..`` segment, no trailing ``/``;
no query, fragment or percent-encoding; 2048 bytes at most, trust domain 255.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnode.errors import InvalidSpiffeIdError
from meshnode.spiffeid import SpiffeID, TrustDomain, parse_spiffe_id, parse_trust_domain

VALID = [
    "spiffe://example.org",
    "spiffe://example.org/a",
    "spiffe://example.org/a/b/c",
    "spiffe://x/Mixed.Case_segment-1",
    "spiffe://a.b-c_d.0/...a",  # a segment may contain dots, just not be '.' or '..'
    "spiffe://example.org/.a/a./..b",
    "spiffe://" + "a" * 255,
    "spiffe://example.org/" + "a" * (2048 - len("spiffe://example.org/")),
]

INVALID = {
    "final newline": "spiffe://example.org/a\n",
    "final newline after the trust domain": "spiffe://example.org\n",
    "carriage return": "spiffe://example.org/a\r",
    "tab in a segment": "spiffe://example.org/a\tb",
    "space": "spiffe://example.org/a b",
    "leading space": " spiffe://example.org/a",
    "NUL": "spiffe://example.org/a\x00",
    "unicode letter": "spiffe://example.org/é",
    "unicode trust domain": "spiffe://exämple.org/a",
    "uppercase scheme": "SPIFFE://example.org/a",
    "mixed-case scheme": "Spiffe://example.org/a",
    "other scheme": "https://example.org/a",
    "one slash": "spiffe:/example.org/a",
    "no authority": "spiffe:///a",
    "empty trust domain": "spiffe://",
    "uppercase trust domain": "spiffe://Example.org/a",
    "port": "spiffe://example.org:8443/a",
    "userinfo": "spiffe://user@example.org/a",
    "userinfo with password": "spiffe://user:pw@example.org/a",
    "IPv6 literal": "spiffe://[::1]/a",
    "percent-encoded path": "spiffe://example.org/a%2Fb",
    "percent-encoded trust domain": "spiffe://exa%6Dple.org/a",
    "query": "spiffe://example.org/a?x=1",
    "fragment": "spiffe://example.org/a#f",
    "empty segment": "spiffe://example.org//a",
    "trailing slash": "spiffe://example.org/a/",
    "root path only": "spiffe://example.org/",
    "dot segment": "spiffe://example.org/a/./b",
    "dot-dot segment": "spiffe://example.org/a/../b",
    "final dot-dot": "spiffe://example.org/..",
    "trust domain over 255 bytes": "spiffe://" + "a" * 256,
    "ID over 2048 bytes": "spiffe://example.org/" + "a" * (2049 - len("spiffe://example.org/")),
    "backslash": "spiffe://example.org/a\\b",
    "plus": "spiffe://example.org/a+b",
    "tilde": "spiffe://example.org/~a",
}


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_parse_and_print_back_unchanged(value: str) -> None:
    sid = parse_spiffe_id(value)
    assert str(sid) == value and sid == parse_spiffe_id(str(sid))


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_ids_are_refused_naming_the_problem(case: str) -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        parse_spiffe_id(INVALID[case])
    assert info.value.reason and info.value.value == INVALID[case]


def test_the_types_cannot_hold_an_invalid_id() -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeID("Not A Domain", "no-leading-slash")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeID(TrustDomain("example.org"), "no-leading-slash")
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeID(TrustDomain("example.org"), "/a\n")
    with pytest.raises(InvalidSpiffeIdError):
        TrustDomain("example.org\n")
    assert parse_trust_domain("spiffe://example.org") == "example.org"


_SEGMENT = st.text(st.sampled_from("abcXYZ019.-_"), min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@given(td=st.text(st.sampled_from("abc019.-_"), min_size=1, max_size=20), segments=st.lists(_SEGMENT, max_size=5),
       junk=st.sampled_from(["\n", "\r\n", "/", "?", "#", "%20", " ", "\x00", "é", ":1"]))
def test_any_spec_id_parses_and_any_junk_appended_is_refused(td: str, segments: list[str], junk: str) -> None:
    value = "spiffe://" + td + "".join("/" + s for s in segments)
    assert str(parse_spiffe_id(value)) == value
    with pytest.raises(InvalidSpiffeIdError):
        parse_spiffe_id(value + junk)


@pytest.mark.parametrize("case", ["final newline", "dot-dot segment", "uppercase trust domain", "port"])
def test_meshnode_policy_check_refuses_what_the_spec_forbids(case: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps({"name": "p", "allow_rules": [
        {"name": "a", "source": {"principals": [INVALID[case]]}},
    ]}))
    done = subprocess.run([sys.executable, "-m", "meshnode.cli", "policy", "check", str(policy)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not a valid SPIFFE ID" in done.stderr and "Traceback" not in done.stderr
