"""agent.toml: what loads, and what each mistake says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshnode.devagent.ca import DevCA
from meshnode.devagent.config import AgentConfig, EntryConfig, load_agent_config
from meshnode.errors import ConfigError, InvalidSpiffeIdError
from meshnode.spiffeid import parse_spiffe_id

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "agent.toml"
HEAD = 'trust_domain = "example.org"\nsocket_dir = "sockets"\n'
ALPHA = '[[entries]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/node/alpha"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def fails(tmp_path: Path, text: str, message: str, kind: type[Exception] = ConfigError) -> None:
    path = write(tmp_path, text)
    with pytest.raises(kind, match=re.escape(message)) as info:
        load_agent_config(path)
    assert str(info.value).startswith("agent: ")


def test_example_config_loads() -> None:
    config = load_agent_config(EXAMPLE)
    assert config.trust_domain == "example.org"
    assert config.socket_dir == Path("/tmp/meshnode-agent")
    assert config.svid_ttl == 3600 and config.state_dir is None
    assert [(e.name, str(e.spiffe_id)) for e in config.entries] == [
        ("alpha", "spiffe://example.org/node/alpha"),
        ("beta", "spiffe://example.org/node/beta"),
        ("gamma", "spiffe://example.org/node/gamma"),
    ]
    assert config.socket_path("beta") == Path("/tmp/meshnode-agent/beta.sock")
    assert config.entry("beta").dns_names == ("beta.local",)


def test_all_options_and_relative_paths(tmp_path: Path) -> None:
    partner = DevCA("partner.org").ca_certificate
    (tmp_path / "partner.pem").write_bytes(partner.public_bytes(serialization.Encoding.PEM))
    config = load_agent_config(write(tmp_path, HEAD + 'svid_ttl = 5\nstate_dir = "state"\n' + ALPHA + (
        'dns_names = ["Alpha.Local"]\nmap_dns = false\nuid = 1000\n'
        '[federation]\n"partner.org" = "partner.pem"\n'
    )))
    assert config.socket_dir == tmp_path / "sockets" and config.state_dir == tmp_path / "state"
    assert config.svid_ttl == 5
    entry = config.entries[0]
    assert (entry.dns_names, entry.map_dns, entry.uid) == (("alpha.local",), False, 1000)
    assert dict(config.federation) == {"partner.org": (partner,)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.svid_ttl = 1  # type: ignore[misc]


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_agent_config(tmp_path / "missing.toml")
    fails(tmp_path, "trust_domain = ", "is not valid TOML")
    fails(tmp_path, 'socket_dir = "s"\n' + ALPHA, "'trust_domain' is required")
    fails(tmp_path, HEAD + "socket_dri = 1\n" + ALPHA, "'socket_dri' is not a known key")
    fails(tmp_path, HEAD, "no entries; add one [[entries]] table")
    fails(tmp_path, HEAD + "svid_ttl = 1\n" + ALPHA, "'svid_ttl' must be at least 2, not 1")
    fails(tmp_path, HEAD + 'svid_ttl = "1.5s"\n' + ALPHA, "'svid_ttl' must be a whole number of seconds")
    fails(tmp_path, HEAD + 'svid_ttl = "1 hour"\n' + ALPHA, "'svid_ttl' is not a duration")


def test_entry_problems(tmp_path: Path) -> None:
    fails(tmp_path, HEAD + '[[entries]]\nname = "a"\n', "'entries[0].spiffe_id' is required")
    fails(tmp_path, HEAD + ALPHA + 'colour = "red"\n', "'entries[0].colour' is not a known key")
    fails(
        tmp_path, HEAD + '[[entries]]\nname = "a"\nspiffe_id = "spiffe://example.org/a/../b"\n',
        "'entries[0].spiffe_id' is not a valid SPIFFE ID: 'spiffe://example.org/a/../b': path segments",
        InvalidSpiffeIdError,
    )
    fails(
        tmp_path, HEAD + '[[entries]]\nname = "a"\nspiffe_id = "spiffe://other.org/a"\n',
        "entry 'a': spiffe://other.org/a is outside the agent's trust domain 'example.org'",
    )
    fails(
        tmp_path, HEAD + '[[entries]]\nname = "a"\nspiffe_id = "spiffe://example.org"\n',
        "names a trust domain, not a workload", InvalidSpiffeIdError,
    )
    fails(tmp_path, HEAD + ALPHA + ALPHA, "two entries named 'alpha' hand out spiffe://example.org/node/alpha")
    fails(
        tmp_path, HEAD + '[[entries]]\nname = "../x"\nspiffe_id = "spiffe://example.org/a"\n',
        "entry name '../x' is not usable as a socket name",
    )
    fails(tmp_path, HEAD + ALPHA + 'dns_names = ["spiffe://example.org/b"]\n',
          "entry 'alpha': dns_names: 'spiffe://example.org/b' is not a DNS host name")
    fails(tmp_path, HEAD + ALPHA + "uid = -1\n", "'entries[0].uid' must be at least 0")
    fails(tmp_path, HEAD + ALPHA + 'map_dns = "no"\n', "'entries[0].map_dns' must be true or false")


def test_an_id_too_long_for_dns_needs_map_dns_false(tmp_path: Path) -> None:
    long_id = "spiffe://example.org/" + "x" * 70
    text = HEAD + f'[[entries]]\nname = "long"\nspiffe_id = "{long_id}"\n'
    fails(tmp_path, text, "has no DNS name (too long for DNS); set map_dns = false")
    assert load_agent_config(write(tmp_path, text + "map_dns = false\n")).entries[0].map_dns is False


def test_federation_problems(tmp_path: Path) -> None:
    fails(tmp_path, HEAD + ALPHA + '[federation]\n"example.org" = "x.pem"\n', "x.pem, which cannot be read")
    (tmp_path / "x.pem").write_text("not a certificate")
    fails(tmp_path, HEAD + ALPHA + '[federation]\n"partner.org" = "x.pem"\n', "'federation.partner.org'")
    own = DevCA("example.org").ca_certificate.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "x.pem").write_bytes(own)
    fails(tmp_path, HEAD + ALPHA + '[federation]\n"example.org" = "x.pem"\n', "lists the agent's own trust domain")
    fails(tmp_path, HEAD + ALPHA + '[federation]\n"Partner.org" = "x.pem"\n', "trust domains must be lowercase")


def test_socket_paths_must_fit_a_unix_socket(tmp_path: Path) -> None:
    fails(tmp_path, f'trust_domain = "example.org"\nsocket_dir = "/tmp/{"d" * 100}"\n' + ALPHA,
          "is longer than 107 bytes (a unix socket limit)")


def test_configs_built_in_code_are_validated_too() -> None:
    alpha = EntryConfig("alpha", parse_spiffe_id("spiffe://example.org/node/alpha"))
    config = AgentConfig("example.org", Path("/tmp/s"), (alpha,))
    assert config.socket_path("alpha") == Path("/tmp/s/alpha.sock")
    with pytest.raises(ConfigError, match="no entry named 'beta'"):
        config.entry("beta")
    with pytest.raises(ConfigError, match="two entries named 'alpha'"):
        AgentConfig("example.org", Path("/tmp/s"), (alpha, alpha))
    with pytest.raises(ConfigError, match="svid_ttl must be a whole number of seconds from 2 to"):
        AgentConfig("example.org", Path("/tmp/s"), (alpha,), svid_ttl=0)


# -- several SVIDs on one socket: [[entries]] that share a name -----------------------------

ALPHA_EXTERNAL = '[[entries]]\nname = "alpha"\nspiffe_id = "spiffe://example.org/node/alpha-external"\n'


def test_entries_sharing_a_name_are_served_together_in_order(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, HEAD + ALPHA + 'hint = "internal"\n' + ALPHA_EXTERNAL + (
        'hint = "external"\nmap_dns = false\n'
        '[[entries]]\nname = "beta"\nspiffe_id = "spiffe://example.org/node/alpha"\n'
    )))
    assert {name: [(str(e.spiffe_id), e.hint, e.map_dns) for e in entries]
            for name, entries in config.sockets.items()} == {
        "alpha": [("spiffe://example.org/node/alpha", "internal", True),
                  ("spiffe://example.org/node/alpha-external", "external", False)],
        "beta": [("spiffe://example.org/node/alpha", None, True)],  # the same ID on another socket is fine
    }
    assert config.entry("alpha").hint == "internal"  # the first is the socket's default SVID
    assert [e.hint for e in config.entries_of("alpha")] == ["internal", "external"]


def test_entries_sharing_a_name_must_agree_on_the_socket(tmp_path: Path) -> None:
    fails(tmp_path, HEAD + ALPHA + 'hint = "a"\n' + ALPHA + 'hint = "b"\n',
          "two entries named 'alpha' hand out spiffe://example.org/node/alpha; an entry name may repeat to serve "
          "several SVIDs on one socket, each with its own spiffe_id")
    fails(tmp_path, HEAD + ALPHA + 'hint = "same"\n' + ALPHA_EXTERNAL + 'hint = "same"\n',
          "entries 'alpha' spiffe://example.org/node/alpha and spiffe://example.org/node/alpha-external have the "
          "same hint 'same'")
    fails(tmp_path, HEAD + ALPHA + "uid = 1000\n" + ALPHA_EXTERNAL,
          "entries named 'alpha' disagree on uid (uid 1000 for spiffe://example.org/node/alpha, no uid for "
          "spiffe://example.org/node/alpha-external); they share one socket, which has one uid")
    fails(tmp_path, HEAD + ALPHA + "uid = 1000\n" + ALPHA_EXTERNAL + "uid = 1001\n", "disagree on uid")


@pytest.mark.parametrize(
    ("hint", "message"),
    [
        ('""', "'entries[0].hint' is empty"),
        ('"in\\u0007ternal"', "'entries[0].hint' holds control or non-printable characters"),
        ('"' + "h" * 1025 + '"', "'entries[0].hint' is 1025 characters long; the limit is 1024"),
        ("7", "'entries[0].hint' must be a string"),
    ],
)
def test_hint_problems(tmp_path: Path, hint: str, message: str) -> None:
    fails(tmp_path, HEAD + ALPHA + f"hint = {hint}\n", message)


def test_repeated_entries_built_in_code_are_validated_too() -> None:
    alpha = EntryConfig("alpha", parse_spiffe_id("spiffe://example.org/node/alpha"), uid=1)
    other = EntryConfig("alpha", parse_spiffe_id("spiffe://example.org/node/other"))
    with pytest.raises(ConfigError, match="disagree on uid"):
        AgentConfig("example.org", Path("/tmp/s"), (alpha, other))
    with pytest.raises(ConfigError, match="hint is empty"):
        EntryConfig("alpha", parse_spiffe_id("spiffe://example.org/node/alpha"), hint="")
