"""The libraries stay libraries: `retrievers`, `bandit` and `ranker` never import `services` or each
other; `suggest` builds on `retrievers` only; `replay` on `bandit` and the record schema (`logged`),
which imports nothing of ours. Read from the source (every import statement, also
the ones inside functions), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "retrievers", "bandit", "ranker", "suggest", "replay", "logged")
ALLOWED = {"retrievers": set(), "bandit": set(), "ranker": set(), "suggest": {"retrievers"},
           "replay": {"bandit", "logged"}, "logged": set()}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_imports(package: str) -> None:
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = imported_packages(path) - {package} - ALLOWED[package]
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: {bad}"


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from services.config import Settings\n    import bandit.policy\n")
    assert imported_packages(f) == {"services", "bandit"}


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules imported by `path` at run time (imports under `if TYPE_CHECKING:` are for
    annotations only and cannot form a cycle)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found


def test_no_import_cycles() -> None:
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {m: _module_imports(p, set(paths)) - {m} for m, p in paths.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
