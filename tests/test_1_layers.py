"""The package's layers, checked from its imports: no arrow from a lower layer to a higher one,
no import cycle, and nothing above ``sources/`` names a kind of source.

The layers, lowest first (docs/architecture.md draws them):

    leaves (errors, redact, home, logs, ipc, durable, settings)  <  cas  <  tier, snapshot
    <  overlay
    <  sources  <  fs  <  mount  <  daemon  <  cli

Imports inside functions count too (they are how heavy modules are put off, not a way around
the layering); imports under ``if TYPE_CHECKING`` count as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "artifactfs"
LAYERS = {
    "errors": 0,
    "redact": 0,
    "home": 0,
    "logs": 0,
    "ipc": 0,
    "durable": 0,
    "settings": 0,
    "__init__": 0,
    "__main__": 9,
    "cas": 1,
    "tier": 2,
    "snapshot": 2,
    "overlay": 3,
    "sources": 4,
    "fs": 5,
    "mount": 6,
    "daemon": 7,
    "cli": 8,
}
SOURCE_KINDS = ("artifactfs.sources.git", "artifactfs.sources.hub")
ABOVE_SOURCES = ("artifactfs.fs", "artifactfs.mount", "artifactfs.daemon", "artifactfs.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``artifactfs`` module ``path`` imports, anywhere in it, as absolute names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    modules = {str(module_name(p)) for p in PACKAGE.rglob("*.py")}
    return {imported for imported in found if imported in modules and imported != name}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return LAYERS[top]


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_top_level_module_has_a_layer() -> None:
    tops = {module.split(".")[1] for module in GRAPH if "." in module}
    assert tops <= set(LAYERS), tops - set(LAYERS)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_arrow_points_up(module: str) -> None:
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert upward == [], f"{module} imports from higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith(ABOVE_SOURCES)))
def test_above_sources_no_kind_of_source_is_named(module: str) -> None:
    named = sorted(t for t in GRAPH[module] if t.startswith(SOURCE_KINDS))
    assert named == [], f"{module} names a kind of source: {named}"


def test_kinds_of_source_do_not_import_each_other() -> None:
    for module, targets in GRAPH.items():
        for kind in SOURCE_KINDS:
            if module.startswith(kind):
                others = [
                    t for t in targets if t.startswith(SOURCE_KINDS) and not t.startswith(kind)
                ]
                assert others == [], f"{module} imports another kind: {others}"


def test_no_import_cycle() -> None:
    """Between modules (a package's ``__init__`` re-exporting its own modules is not a cycle
    through the package: that arrow is left out)."""
    edges = {
        module: {t for t in targets if not module.startswith(t + ".") and t != module}
        for module, targets in GRAPH.items()
    }
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The import reader sees function-level and relative imports (what the checks rely on)."""
    found = imports_of(PACKAGE / "mount" / "head_start.py")
    assert "artifactfs.sources" in found
    lazy = imports_of(PACKAGE / "cli" / "mount_commands.py")
    assert "artifactfs.mount.launch" in lazy  # imported inside a function
