"""``meshnode policy check|explain``: exit codes and what the user reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshnode.cli import main

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "policy.json")


def test_check_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "valid policy 'meshnode-demo': 1 deny rule(s), 3 allow rule(s)" in out


def test_check_refuses_an_invalid_file_with_reason_and_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "p",\n "allow_rules": [{"name": "a",\n   "request": {"paths": ["pkg.S/M"]}}]}')
    assert main(["policy", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3:26: allow_rules[0].request.paths[0]" in err
    assert "must start with '/': write '/pkg.S/M'" in err


def test_check_prints_lint_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loose = tmp_path / "loose.json"
    loose.write_text('{"name": "p", "allow_rules": [{"name": "a", "source": {"principals": ["spiffe://example.org*"]}}]}')
    assert main(["policy", "check", str(loose)]) == 0
    assert "also matches other trust domains" in capsys.readouterr().err


def test_explain_allowed_and_denied(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["policy", "explain", EXAMPLE, "--peer", "spiffe://example.org/node/alpha", "--method"]
    assert main([*args, "/meshnode.demo.v1.Echo/Say"]) == 0
    out = capsys.readouterr().out
    assert "decision: ALLOW" in out and "rule: alpha-calls-echo" in out
    gamma = ["policy", "explain", EXAMPLE, "--peer", "spiffe://example.org/node/gamma"]
    assert main([*gamma, "--method", "/meshnode.demo.v1.Relay/Forward"]) == 1
    out = capsys.readouterr().out
    assert "decision: DENY" in out and "rule: gamma-may-not-relay" in out
    assert "[allow] nodes-relay: MATCH" in out  # the allow rule that lost to the deny rule


@pytest.mark.parametrize(
    ("peer", "method", "message"),
    [
        ("spiffe://example.org/a/../b", "/p.S/M", "--peer: invalid SPIFFE ID"),
        ("spiffe://example.org/a", "p.S/M", "--method: method 'p.S/M' must start with '/'"),
    ],
)
def test_explain_refuses_bad_input(peer: str, method: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", EXAMPLE, "--peer", peer, "--method", method]) == 2
    assert message in capsys.readouterr().err


def test_toml_allowlists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node.toml"
    node.write_text('[node]\nname = "a"\n\n[authz]\nallow = ["spiffe://example.org/ns/prod/*"]\naudit = "all"\n')
    assert main(["policy", "check", str(node)]) == 0
    assert "0 deny rule(s), 1 allow rule(s)" in capsys.readouterr().out
    base = ["policy", "explain", str(node), "--peer"]
    assert main([*base, "spiffe://example.org/ns/prod/api", "--method", "/p.S/M"]) == 0
    assert main([*base, "spiffe://example.org/ns/production", "--method", "/p.S/M"]) == 1
    node.write_text('[authz]\nallow = ["spiffe://example.org/ns/prod*"]\n')
    capsys.readouterr()
    assert main(["policy", "check", str(node)]) == 2
    assert "allow[0]" in capsys.readouterr().err


def test_the_installed_command_exits_with_the_documented_codes() -> None:
    run = [sys.executable, "-m", "meshnode.cli", "policy", "explain", EXAMPLE, "--method", "/meshnode.demo.v1.Echo/Say"]
    assert subprocess.run([*run, "--peer", "spiffe://example.org/node/alpha"], capture_output=True).returncode == 0
    assert subprocess.run([*run, "--peer", "spiffe://example.org/node/beta"], capture_output=True).returncode == 1


def test_explain_config_sees_the_effective_policy_of_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built-in health rules and the services' class allow lists count, as in the running node."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # tests.support.services imports from here
    node = tmp_path / "node.toml"
    node.write_text(
        '[node]\nname = "g"\nlisten = "127.0.0.1:0"\nservices = ["tests.support.services:Greeter"]\n'
        '[identity]\nsource = "dev"\ntrust_domain = "example.org"\n'
    )
    beta, gamma = "spiffe://example.org/node/beta", "spiffe://example.org/node/gamma"
    health = "/grpc.health.v1.Health/Check"
    say = "/meshnode.demo.v1.Echo/Say"
    for peer, method, allowed in ((gamma, health, True), (beta, say, True), (gamma, say, False)):
        code = main(["policy", "explain", "--config", str(node), "--peer", peer, "--method", method])
        out = capsys.readouterr().out
        assert code == (0 if allowed else 1), out
    assert "Greeter.allow" in out
    # FILE and --config are alternatives: exactly one
    with pytest.raises(SystemExit):
        main(["policy", "explain", str(node), "--config", str(node), "--peer", beta, "--method", say])


def test_check_json_reports_what_run_would_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node.toml"
    node.write_text(
        '[node]\nname = "g"\nlisten = "127.0.0.1:0"\nmode = "production"\n'
        '[identity]\nsource = "dev"\ntrust_domain = "example.org"\n[authz]\nallow = ["spiffe://example.org"]\n'
    )
    assert main(["check", "--json", str(node)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ready_for_production"] is False
    assert report["run"] == {
        "starts": False, "exit": 2,
        "error": report["run"]["error"],
    } and "identity source is a production source" in report["run"]["error"]
    assert {c["name"] for c in report["checks"] if not c["ok"]} >= {"identity source is a production source"}
