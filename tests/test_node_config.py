"""node.toml: frozen, validated at load, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.config.node import load_node_config
from meshnode.errors import ConfigError

GOOD = """
[node]
name = "alpha"
listen = "127.0.0.1:7001"
mode = "staging"
services = ["meshnode.demo:EchoService"]
shutdown_grace = 2

[identity]
source = "workload-api"
socket = "unix:///tmp/agent.sock"
trust_domain = "example.org"
timeout = 3
federates_with = ["partner.org"]

[authz]
allow = ["spiffe://example.org/node/beta", "spiffe://example.org/ns/*", "spiffe://partner.org"]
audit = "all"

[peers.beta]
address = "127.0.0.1:7002"
spiffe_id = "spiffe://example.org/node/beta"
verify = "dns"

[peers.gamma]
address = "[::1]:7003"
spiffe_id = "spiffe://example.org/node/gamma"

[telemetry]
exporter = "jsonl"
jsonl_path = "spans/alpha.jsonl"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_a_full_config_loads_frozen(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path, GOOD), environ={})
    assert cfg.name == "alpha" and cfg.mode == "staging"
    assert cfg.identity.accepted_trust_domains("example.org") == {"example.org", "partner.org"}
    beta = cfg.peers["beta"]
    assert beta.verify == "dns" and beta.tls_name == "beta.node.spiffe--id.example.org"
    assert cfg.peers["gamma"].verify == "spiffe-id"
    assert cfg.telemetry.jsonl_path == str(tmp_path / "spans/alpha.jsonl")
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.peers["x"] = beta  # type: ignore[index]


def test_env_overrides_mode_and_listen(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path, GOOD), environ={"MESHNODE_MODE": "production",
                                                          "MESHNODE_LISTEN": "0.0.0.0:9000"})
    assert cfg.mode == "production" and cfg.listen == "0.0.0.0:9000"
    with pytest.raises(ConfigError, match="MESHNODE_MODE='prod' must be one of"):
        load_node_config(write(tmp_path, GOOD), environ={"MESHNODE_MODE": "prod"})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[node]\n", "[node]\nnmae = 'x'\n"), "'node.nmae' is not a known key"),
        (("[node]\n", "[node]\nnmae = 'x'\n"), "did you mean 'name'"),
        (('listen = "127.0.0.1:7001"', 'listen = "127.0.0.1"'), "is not host:port"),
        (('listen = "127.0.0.1:7001"', 'listen = "127.0.0.1:99999"'), "out of range"),
        (('mode = "staging"', 'mode = "prod"'), "'node.mode' must be one of development, staging, production"),
        (('source = "workload-api"', 'source = "spire"'), "'identity.source' must be one of"),
        (('trust_domain = "example.org"', 'trust_domain = "Example.org"'), "lowercase"),
        (('spiffe_id = "spiffe://example.org/node/beta"', 'spiffe_id = "spiffe://example.org/node/../beta"'),
         "'peers.beta.spiffe_id' is not a valid SPIFFE ID"),
        (('address = "127.0.0.1:7002"', 'address = "127.0.0.1"'), "'peers.beta.address'"),
        (('timeout = 3', 'timeout = "3x"'), "'identity.timeout' is not a duration"),
        (('"spiffe://example.org/ns/*"', '"spiffe://example.org/ns/"'), "trailing '/'"),
        (('services = ["meshnode.demo:EchoService"]', 'services = ["EchoService"]'), "package.module:ClassName"),
        (("[peers.beta]\n", "[peers.beta]\ncolour = 1\n"), "'peers.beta.colour' is not a known key"),
        (('exporter = "jsonl"', 'exporter = "zipkin"'), "'telemetry.exporter' must be one of"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        load_node_config(write(tmp_path, GOOD.replace(old, new, 1)), environ={})
    assert message in str(info.value)
    assert str(tmp_path / "node.toml") in str(info.value)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 3"):
        load_node_config(write(tmp_path, "[node]\nname='a'\nlisten = \n"), environ={})


def test_missing_file_and_missing_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="'node' is required"):
        load_node_config(write(tmp_path, "[identity]\nsource='dev'\n"), environ={})


def test_files_source_needs_its_files(tmp_path: Path) -> None:
    text = '[node]\nname="a"\nlisten="127.0.0.1:1"\n[identity]\nsource="files"\ncert="c.pem"\n'
    with pytest.raises(ConfigError, match=r"'identity\.key' is required when source = \"files\""):
        load_node_config(write(tmp_path, text), environ={})


def test_config_choices_are_validated_when_a_config_is_built_in_code() -> None:
    from meshnode.config.node import AuthzSettings, IdentityConfig, NodeConfig, PeerConfig
    from meshnode.errors import ConfigError
    from meshnode.spiffeid import parse_spiffe_id

    sid = parse_spiffe_id("spiffe://example.org/b")
    with pytest.raises(ConfigError, match=r"\[peers.b\] verify must be one of spiffe-id, dns; got 'DNS'"):
        PeerConfig("b", "127.0.0.1:1", sid, verify="DNS")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[identity\] source"):
        IdentityConfig(source="spire")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[authz\] audit"):
        AuthzSettings(audit="always")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"\[node\] mode"):
        NodeConfig("n", mode="prod")  # type: ignore[arg-type]
    assert NodeConfig("n").listen is None  # a client-only node


def test_identity_spiffe_id_and_hint_select_for_the_workload_api(tmp_path: Path) -> None:
    selection = 'spiffe_id = "spiffe://example.org/node/alpha"\nhint = "internal"\n'
    text = GOOD.replace("timeout = 3\n", "timeout = 3\n" + selection)
    identity = load_node_config(write(tmp_path, text), environ={}).identity
    assert (str(identity.spiffe_id), identity.hint) == ("spiffe://example.org/node/alpha", "internal")
    assert load_node_config(write(tmp_path, GOOD), environ={}).identity.hint is None


@pytest.mark.parametrize(
    ("hint", "message"),
    [
        ('""', "'identity.hint' is empty; leave the key out"),
        ('"a\\u001b[31m"', "'identity.hint' holds control or non-printable characters"),
        ('"' + "h" * 1025 + '"', "'identity.hint' is 1025 characters long; the limit is 1024"),
        ("1", "'identity.hint' must be a string"),
    ],
)
def test_a_bad_hint_names_the_key(tmp_path: Path, hint: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_node_config(write(tmp_path, GOOD.replace("timeout = 3\n", f"timeout = 3\nhint = {hint}\n")), environ={})
    assert message in str(info.value) and str(tmp_path / "node.toml") in str(info.value)


def test_a_hint_needs_the_workload_api_source(tmp_path: Path) -> None:
    from meshnode.config.node import IdentityConfig

    text = '[node]\nname="a"\n[identity]\nsource="dev"\nhint="internal"\n'
    with pytest.raises(ConfigError, match=r"'identity\.hint' selects among the SVIDs a Workload API delivers; it "
                                          r"applies only to source = \"workload-api\", not 'dev'"):
        load_node_config(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=r"\[identity\] hint selects among"):
        IdentityConfig(source="files", hint="internal")
    with pytest.raises(ConfigError, match=r"\[identity\] hint is empty"):
        IdentityConfig(hint="")
