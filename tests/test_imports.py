"""The import graph of meshnode has no cycle: data flows one way (style.md).

Every import counts: module level, inside functions, and under
``TYPE_CHECKING``. A cycle, even one Python tolerates at run time, means a
lower layer knows about a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "meshnode"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """meshnode modules imported by ``name`` (a package counts as its __init__)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import submodule" imports the submodule; "from pkg import name", the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_lower_layers_never_import_the_node() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name.startswith(("meshnode.cli", "meshnode.demo", "meshnode.bench")) or name in (
            "meshnode", "meshnode.node",
        ):
            continue
        assert "meshnode.node" not in targets, name


def package_of(module: str) -> str:
    """``meshnode.identity.files`` -> ``meshnode.identity``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between meshnode's packages (and top-level modules)."""
    out: dict[str, set[str]] = {}
    for name, targets in edges.items():
        here = package_of(name)
        out.setdefault(here, set()).update(package_of(t) for t in targets if package_of(t) != here)
    return out


def test_identity_consumes_identities_only() -> None:
    """Nothing under meshnode/identity imports the dev agent (which produces identities) or the
    configuration (the node hands a source the values it needs)."""
    offending = {
        name: sorted(t for t in targets if package_of(t) in ("meshnode.devagent", "meshnode.config"))
        for name, targets in graph().items()
        if package_of(name) == "meshnode.identity"
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_the_dev_agent_lives_in_its_own_package() -> None:
    mods = modules()
    for gone in ("devca", "agent", "agent_server", "agent_sockets", "agent_limits", "peercred", "safe_dir", "dev"):
        assert f"meshnode.identity.{gone}" not in mods
    assert "meshnode.config.agent" not in mods
    for module in ("ca", "agent", "server", "sockets", "limits", "peercred", "safe_dir", "config", "source"):
        assert f"meshnode.devagent.{module}" in mods


def test_the_package_graph_has_no_cycle() -> None:
    """Not only modules: no two packages import each other (identity <-> config was one)."""
    packages = package_edges(graph())
    assert find_cycle(packages) is None, " -> ".join(find_cycle(packages) or [])
