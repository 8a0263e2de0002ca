"""Rules of the layout (docs/architecture.md), checked on the source: small files, no import
loops between modules, generation independent of training, no family names in the core's tools."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"adapters_core": ROOT / "adapters_core", "adapt_cli": ROOT / "adapt_cli",
            **{folder.name: folder for folder in sorted((ROOT / "plugins").glob("adapt_*"))}}
MAX_LINES = 500


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def module_level_imports(path: Path, name: str) -> set[str]:
    """Modules imported when ``path`` is imported: top-level statements, not those under
    ``if TYPE_CHECKING:`` or inside functions (imported when called)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_files_are_small() -> None:
    long = [f"{path.relative_to(ROOT)}: {n} lines" for _, path in modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) >= MAX_LINES]
    assert not long, long


def test_no_import_loops() -> None:
    names = dict(modules())
    graph = {name: {dep for dep in module_level_imports(path, name) if dep in names and dep != name}
             for name, path in names.items()}
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                loops.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package importing its own submodules (its __init__) is how packages export names
    real = [loop for loop in loops if not all(a.startswith(b) or b.startswith(a) for a, b in zip(loop, loop[1:]))]
    assert not real, " ; ".join(" -> ".join(loop) for loop in real)


@pytest.mark.parametrize("package", ["adapters_core.generate", "adapters_core.models", "adapters_core.interop"])
def test_generation_and_models_do_not_import_training(package: str) -> None:
    offenders = [
        f"{name} imports {dep}"
        for name, path in modules()
        if name == package or name.startswith(package + ".")
        for dep in module_level_imports(path, name)
        if dep.startswith("adapters_core.train")
    ]
    assert not offenders, offenders


def test_tools_take_a_family_never_a_v2_flag() -> None:
    """Only the edge (the flag's definition and its resolution to a family) says ``v2``; the
    tools, training and generation ask the model's family."""
    import re

    edge = {"adapters_core.train.args", "adapters_core.plugins", "adapters_core.family", "adapters_core.metadata"}
    inside = ("adapters_core.ops", "adapters_core.train", "adapters_core.generate", "adapters_core.interop",
              "adapters_core.network", "adapters_core.matching", "adapters_core.targets", "adapters_core.api")
    pattern = re.compile(r"\bv2\b|is_v2|\"sd_v[12]|sd15|sd2_")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for name, path in modules()
        if name.startswith(inside) and name not in edge
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line.replace("kohya_v2", "").replace("args.v2", "").replace("--v2", ""))
    ]
    assert not offenders, offenders
