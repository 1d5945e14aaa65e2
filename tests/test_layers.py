"""The library never imports the CLI, and the layer contract is declared (`make test` runs `lint-imports`)."""
from __future__ import annotations

import ast

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_the_library_never_imports_the_cli():
    offenders = [f"{p.relative_to(REPO)}: {m}" for p in (REPO / "seg3d").rglob("*.py") for m in _imports(p)
                 if m in ("seg3d.cli", "cli") or m.startswith(("seg3d.cli.", "cli."))]
    assert offenders == []


def test_every_library_package_is_in_a_layer():
    """A new top-level package of seg3d/ must be placed in the contract, or import-linter would not check it."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {m.strip(" ()") for layer in cfg["layers"] for m in layer.split("|")}
    packages = {p.stem if p.is_file() else p.name for p in (REPO / "seg3d").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert packages - named == set(), f"not in any layer of pyproject.toml: {sorted(packages - named)}"
