"""The tree's rules (docs/architecture.md, "Layout"), checked from the source: which package may
import which, and how long a module of the gateway may grow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"server", "handlers", "services", "schemas", "docgen", "client", "realtime_gateway_client", "tests", "bench"}
MAX_LINES = 300


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PROJECT


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("schemas", {"schemas"}),  # the frames' shapes: nothing of the project above them
        ("services", {"services", "schemas"}),  # no Tornado handlers, no documents
        ("handlers", {"handlers", "services", "schemas"}),
    ],
)
def test_each_package_imports_only_what_is_below_it(package: str, allowed: set[str]) -> None:
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) - allowed) for p in _modules(package)}
    assert {k: v for k, v in wrong.items() if v} == {}


@pytest.mark.parametrize("package", ["services", "handlers"])
def test_no_module_of_the_gateway_is_over_the_line_budget(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n for p in _modules(package) if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
