"""The libraries stay libraries: `retrievers`, `bandit` and `ranker` never import `services` or each
other; `suggest` builds on `retrievers` only. Read from the source (every import statement, also
the ones inside functions), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "retrievers", "bandit", "ranker", "suggest")
ALLOWED = {"retrievers": set(), "bandit": set(), "ranker": set(), "suggest": {"retrievers"}}


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
