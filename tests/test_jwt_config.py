"""The JWT-SVID keys of node.toml, and two `meshnode run` processes using them through the dev agent."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshnode.config.node import node_config_from_dict
from meshnode.credentials import channel_credentials
from meshnode.demo.v1 import demo_pb2, demo_pb2_grpc
from meshnode.devagent.agent import DevAgentThread
from meshnode.devagent.config import AgentConfig, EntryConfig
from meshnode.errors import ConfigError
from meshnode.spiffeid import dns_name_for, parse_spiffe_id
from meshnode.testing import issue_snapshot, short_tmpdir
from tests.support.procs import Meshnode

ALPHA = "spiffe://example.org/node/alpha"
BETA = "spiffe://example.org/node/beta"
CLIENT = "spiffe://example.org/demo/client"
PEER = {"address": "127.0.0.1:7002", "spiffe_id": BETA}
FILES = {"source": "files", "cert": "c.pem", "key": "k.pem", "bundle": "b.pem", "trust_domain": "example.org"}


def config(peer: dict[str, Any] | None = None, authz: dict[str, Any] | None = None,
           identity: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"node": {"name": "alpha", "listen": "127.0.0.1:0"},
                            "identity": identity or {"source": "dev"}, "authz": authz or {}}
    if peer is not None:
        data["peers"] = {"beta": {**PEER, **peer}}
    return node_config_from_dict(data, base_dir=Path("/etc/meshnode"), environ={})


def test_the_keys_and_their_defaults() -> None:
    plain = config({})
    assert (plain.peers["beta"].jwt, plain.authz.jwt, plain.authz.principal) == (False, "off", "mtls")
    cfg = config({"jwt": True}, {"jwt": "optional", "jwt_audiences": ["reports"]},
                 {"source": "dev", "jwt_bundles_dir": "jwt"})
    assert cfg.peers["beta"].audience == BETA  # the peer's SPIFFE ID by default
    assert cfg.authz.jwt_audiences == ("reports",) and cfg.identity.jwt_bundles_dir == Path("/etc/meshnode/jwt")
    cfg = config({"jwt": True, "jwt_audience": "beta-api", "jwt_token_file": "tokens/beta"},
                 {"principal": "jwt", "jwt_forwarders": ["spiffe://example.org/gw"]})
    assert cfg.peers["beta"].audience == "beta-api"
    assert cfg.peers["beta"].jwt_token_file == Path("/etc/meshnode/tokens/beta")
    assert cfg.authz.jwt == "required"  # principal = "jwt" requires a token
    assert [str(f) for f in cfg.authz.jwt_forwarders] == ["spiffe://example.org/gw"]
    files = config({"jwt": True, "jwt_token_file": "/run/t"}, {"jwt": "required"}, {**FILES, "jwt_bundles_dir": "j"})
    assert files.peers["beta"].jwt_token_file == Path("/run/t")


@pytest.mark.parametrize(
    ("peer", "authz", "identity", "message"),
    [
        ({}, {"jwt": "sometimes"}, None, "'authz.jwt' must be one of off, optional, required"),
        ({}, {"principal": "token"}, None, "'authz.principal' must be one of mtls, jwt"),
        ({}, {"principal": "jwt", "jwt": "optional"}, None, "'authz.jwt' must be \"required\" with principal"),
        ({}, {"jwt_forwarders": ["spiffe://example.org/gw"]}, None, "'authz.jwt_forwarders' applies only with"),
        ({}, {"principal": "jwt", "jwt_forwarders": ["spiffe://example.org/*"]}, None, "'authz.jwt_forwarders' item 0"),
        ({}, {"jwt_audiences": ["x"]}, None, "'authz.jwt_audiences' applies only with jwt"),
        ({}, {"jwt": "required", "jwt_audiences": [" "]}, None, "'authz.jwt_audiences' item 0 is empty"),
        ({"jwt_audience": "x"}, {}, None, "'peers.beta.jwt_audience' applies only with jwt = true"),
        ({"jwt_token_file": "t"}, {}, None, "'peers.beta.jwt_token_file' applies only with jwt = true"),
        ({"jwt": True, "jwt_audience": "a\nb"}, {}, None, "'peers.beta.jwt_audience' holds control"),
        ({"jwt": "yes"}, {}, None, "'peers.beta.jwt' must be true or false"),
        ({"jwt": True}, {}, FILES, "[peers.beta] jwt = true needs jwt_token_file with [identity] source = \"files\""),
        ({}, {"jwt": "optional"}, FILES, "[authz] jwt needs the JWT bundles to verify tokens with"),
    ],
)
def test_contradictions_are_refused_naming_the_key(
    peer: dict[str, Any], authz: dict[str, Any], identity: dict[str, Any] | None, message: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        config(peer, authz, identity)
    assert message in str(refused.value)


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    d = short_tmpdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.mark.slow
def test_meshnode_run_relays_with_a_jwt_svid_and_refuses_calls_without(agent_dir: Path, tmp_path: Path) -> None:
    """alpha relays to beta with `jwt = true`; beta (`jwt = "required"`) sees alpha's token; a call
    straight to beta without a token is refused. Both are `meshnode run` processes on the dev agent."""
    names = {"alpha": ALPHA, "beta": BETA}
    entries = tuple(EntryConfig(n, parse_spiffe_id(i)) for n, i in names.items())
    agent_cfg = AgentConfig(trust_domain="example.org", socket_dir=agent_dir / "sockets",
                            state_dir=agent_dir / "state", entries=entries)

    def write(name: str, allow: list[str], authz: str, peers: dict[str, int]) -> Path:
        text = (f'[node]\nname = "{name}"\nlisten = "127.0.0.1:0"\n'
                'services = ["meshnode.demo:EchoService", "meshnode.demo:RelayService"]\n'
                f'[identity]\nsource = "workload-api"\nsocket = "{agent.socket_address(name)}"\n'
                f'trust_domain = "example.org"\n[authz]\nallow = {json.dumps(allow)}\n{authz}\n')
        for other, port in peers.items():
            text += (f'[peers.{other}]\naddress = "127.0.0.1:{port}"\nspiffe_id = "{names[other]}"\n'
                     'verify = "dns"\njwt = true\n')
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    with DevAgentThread(agent_cfg) as agent, contextlib.ExitStack() as running:
        beta = running.enter_context(Meshnode(["run", str(write("beta", [ALPHA, CLIENT], 'jwt = "required"', {}))]))
        beta_port = beta.ready("beta")
        alpha = running.enter_context(Meshnode(["run", str(write("alpha", [CLIENT], "", {"beta": beta_port}))]))
        alpha_port = alpha.ready("alpha")
        caller = issue_snapshot(agent.agent.ca, CLIENT)

        def channel(port: int, server: str) -> grpc.Channel:
            name = dns_name_for(parse_spiffe_id(server))
            return grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(caller, "example.org"),
                                       options=[("grpc.ssl_target_name_override", name)])

        with channel(alpha_port, ALPHA) as ch:
            reply = demo_pb2_grpc.RelayStub(ch).Forward(demo_pb2.ForwardRequest(text="hi", route=["beta"]), timeout=10)
        assert [(h.node, h.caller) for h in reply.hops] == [("alpha", CLIENT), ("beta", ALPHA)]
        with channel(beta_port, BETA) as ch, pytest.raises(grpc.RpcError) as refused:
            demo_pb2_grpc.EchoStub(ch).Say(demo_pb2.SayRequest(text="hi"), timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "carries no JWT-SVID" in (refused.value.details() or "")
        for node in (alpha, beta):
            assert node.terminate() == 0, node.output()


def test_the_readme_example_configs_load() -> None:
    import re
    import tomllib

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## JWT-SVIDs"):readme.index("## Traces")]
    alpha_text, beta_text = re.findall(r"```toml\n(.*?)```", section, re.S)
    base = {"node": {"name": "n", "listen": "127.0.0.1:0"}, "identity": {"source": "dev"}}
    alpha = node_config_from_dict({**base, **tomllib.loads(alpha_text)}, environ={})
    beta = node_config_from_dict({**base, **tomllib.loads(beta_text)}, environ={})
    assert alpha.peers["beta"].jwt and alpha.peers["beta"].audience == "spiffe://example.org/node/beta"
    assert str(alpha.peers["beta"].spiffe_id) == "spiffe://example.org/gateway"
    assert (beta.authz.principal, beta.authz.jwt) == ("jwt", "required")


def test_boot_checks_the_jwt_bundles_and_the_first_tokens(tmp_path: Path) -> None:
    """`meshnode check` and `meshnode run` share these checks: production refuses a node that cannot
    validate tokens (no JWT bundle arrived) or cannot get the first token for a jwt = true peer."""
    from meshnode.boot import boot
    from meshnode.devagent.ca import DevCA
    from tests.support.federation import x509_key

    ca = DevCA("example.org")
    snap = issue_snapshot(ca, ALPHA)
    for name, data in (("c.pem", snap.chain_pem), ("k.pem", snap.key_pem), ("b.pem", snap.bundle_pem("example.org"))):
        (tmp_path / name).write_bytes(data)
    identity = {**FILES, "cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem"),
                "bundle": str(tmp_path / "b.pem"), "jwt_bundles_dir": str(tmp_path / "jwt")}
    data: dict[str, Any] = {"node": {"name": "alpha", "listen": "127.0.0.1:0", "mode": "production"},
                            "identity": identity, "authz": {"allow": [BETA], "jwt": "required"},
                            "peers": {"beta": {**PEER, "jwt": True, "jwt_token_file": str(tmp_path / "beta.jwt")}}}
    with contextlib.closing(boot(node_config_from_dict(data, environ={}))) as booted:
        refused = booted.refusal()
        assert refused is not None and refused.name == "JWT-SVIDs for jwt = true peers obtained"
        assert f"the token file {tmp_path / 'beta.jwt'} does not exist" in refused.detail
        bundles = next(c for c in booted.checks if c.name == "JWT bundles obtained")
        assert not bundles.ok and "no trust domain yet" in bundles.detail
    (tmp_path / "beta.jwt").write_text(ca.sign_jwt(ALPHA, [BETA], dt.timedelta(minutes=5)))
    (tmp_path / "jwt").mkdir()
    keys = [x509_key(c) for c in ca.bundle] + json.loads(ca.jwks())["keys"]
    (tmp_path / "jwt" / "example.org.json").write_text(json.dumps({"keys": keys}))
    with contextlib.closing(boot(node_config_from_dict(data, environ={}))) as booted:
        assert booted.refusal() is None, [c for c in booted.checks if not c.ok]
        assert booted.jwt is not None and booted.jwt.authn is not None and set(booted.jwt.call_auth) == {"beta"}
