"""Errors carry fields and their messages are built from them; nothing re-parses an error's text."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import meshnode.errors as errors
from meshnode.authz import parse_a43
from meshnode.config.node import load_node_config, node_config_from_dict
from meshnode.errors import ConfigError, InvalidBundleError, InvalidSpiffeIdError, MeshnodeError, PolicyError
from meshnode.identity.bundle_file import parse_spiffe_bundle
from meshnode.spiffeid import parse_spiffe_id

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = [p for p in (ROOT / "meshnode").rglob("*.py") if "_pb2" not in p.name]


def test_no_module_cuts_up_an_error_message() -> None:
    """``str(exc).removeprefix(...)``, ``.split(": ")`` and friends on an exception's text are refused:
    use the error's fields (``exc.reason``, ``exc.key``...)."""
    cutting = re.compile(r"str\((exc|err|error|e)\)\s*\.\s*(removeprefix|split|rsplit|partition|rpartition)\((?!\))")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}" for path in LIBRARY
        for n, line in enumerate(path.read_text().splitlines(), 1) if cutting.search(line)
    ]
    assert offenders == []


def test_every_error_class_is_drawn_in_the_tree_and_is_a_meshnode_error() -> None:
    doc = errors.__doc__ or ""
    classes = [obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, BaseException)]
    for cls in classes:
        assert issubclass(cls, MeshnodeError), cls
        assert cls.__name__ in doc, f"{cls.__name__} is not in the tree drawn in meshnode/errors.py"
    defined_elsewhere = [
        f"{path.relative_to(ROOT)}:{node.name}" for path in LIBRARY
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and path.name != "errors.py"
        and path.parent.name not in ("demo", "bench")  # their own errors, outside the library
        and any(isinstance(b, ast.Name) and b.id.endswith("Error") and b.id in vars(errors) for b in node.bases)
    ]
    assert defined_elsewhere == []  # one tree, in one module


def test_a_config_error_names_key_and_file_as_fields(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nname = "n"\nshutdown_grace = nan\n')
    with pytest.raises(ConfigError) as info:
        load_node_config(config, environ={})
    exc = info.value
    assert exc.key == "node.shutdown_grace" and exc.path == str(config)
    assert str(exc) == f"config: {config}: 'node.shutdown_grace' {exc.reason}"
    with pytest.raises(ConfigError) as info:
        node_config_from_dict({"node": {"name": "n"}, "peers": {"b": {"address": "127.0.0.1:²",
                                                                       "spiffe_id": "spiffe://e.org/b"}}})
    assert info.value.key == "peers.b.address" and "is not host:port" in info.value.reason


def test_a_policy_error_carries_file_line_and_column() -> None:
    text = json.dumps({"name": "p", "allow_rules": [{"name": "a", "source": {"principals": ["spiffe://e.org/a*b"]}}]})
    with pytest.raises(PolicyError) as info:
        parse_a43(text, "p.json")
    exc = info.value
    assert (exc.path, exc.line) == ("p.json", 1) and exc.column is not None and exc.column > 1
    assert exc.key == "allow_rules[0].source.principals[0]"
    assert str(exc) == f"authz: {exc.reason}" and exc.reason.startswith(f"p.json:1:{exc.column}: ")


def test_spiffe_id_and_bundle_errors_carry_what_was_wrong() -> None:
    with pytest.raises(InvalidSpiffeIdError) as info:
        parse_spiffe_id("spiffe://example.org/a/../b")
    assert info.value.value == "spiffe://example.org/a/../b"
    assert info.value.reason == "path segments '.' and '..' are not allowed"
    with pytest.raises(InvalidBundleError) as bundle:
        parse_spiffe_bundle(b'{"keys": []}', "partner.org")
    assert bundle.value.trust_domain == "partner.org" and bundle.value.reason in str(bundle.value)


def test_an_error_built_from_fields_has_the_component_first() -> None:
    exc = MeshnodeError(reason="what is wrong", component="identity", trust_domain="example.org")
    assert str(exc) == "identity: what is wrong" and exc.trust_domain == "example.org"
    assert MeshnodeError("as written").reason == "as written"
