"""The package's modules import each other without a circle, so any of them can be imported
first (the fleet config checks backend options through the launcher's backends, and the
backends use the config's types only for annotations)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import modelserver

PACKAGE_DIR = Path(modelserver.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(
    tree: ast.Module, here: str, is_package: bool, modules: set[str]
) -> set[str]:
    """Modules imported when the module itself is imported: top-level statements, not
    `if TYPE_CHECKING:` blocks, not imports inside functions. `from package import module`
    is an edge to the module (the package's own __init__ runs first for every import)."""
    found: set[str] = set()
    package = here if is_package else here.rpartition(".")[0]
    for node in _run_at_import(tree.body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {name for name in found if name.startswith("modelserver")}


def _run_at_import(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of `body` that runs when the module is imported: not the bodies of
    functions (in classes too), not `if TYPE_CHECKING:` blocks."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _run_at_import(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "handlers", "finalbody"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _run_at_import(inner)


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(path): path for path in PACKAGE_DIR.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        imports = _runtime_imports(tree, name, path.name == "__init__.py", set(modules))
        graph[name] = {target for target in imports if target in modules and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return [*stack[stack.index(node):], node]
        if node in done:
            return None
        stack.append(node)
        for target in sorted(graph[node]):
            if (found := visit(target)) is not None:
                return found
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if (found := visit(node)) is not None:
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    assert "modelserver.launcher.backends" in graph["modelserver.config"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_backends_and_the_config_import_in_either_order() -> None:
    for first in ("modelserver.launcher.backends.sim", "modelserver.config"):
        code = f"import {first}; import modelserver.config, modelserver.launcher.backends"
        subprocess.run([sys.executable, "-c", code], check=True)
