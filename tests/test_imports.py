"""The dependency graph can be read from the source tree alone, and it flows one way.

Library modules import each other with relative imports, which static tools (pyright, IDEs,
pydeps) resolve without the installed `drsan_kit` name; the scripts keep working when run by
path through a PEP 366 preamble. The layers: core <- edge_runtime <- converters <- eval.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "edge_runtime", "converters", "eval")
# what each part may import from the kit (besides itself): the README's diagram
ALLOWED = {"core": set(), "edge_runtime": {"core"}, "converters": {"core", "edge_runtime"},
           "eval": {"core", "edge_runtime", "converters"}}


def modules():
    return [f for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*.py"))]


def kit_imports(path: Path):
    """(line, target parts) of every import of the kit in `path`, resolved against the source tree."""
    here = list(path.relative_to(REPO).parent.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            names = [] if node.module else [a.name for a in node.names]
            yield node.lineno, target, names
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drsan_kit"):
            yield node.lineno, ["drsan_kit", *node.module.split(".")[1:]], []
        elif isinstance(node, ast.Import) and any(a.name.startswith("drsan_kit") for a in node.names):
            yield node.lineno, ["drsan_kit"], []


def exists(parts: list[str]) -> bool:
    p = REPO.joinpath(*parts)
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_imports_resolve_in_the_source_tree_and_follow_the_layers(path):
    pkg = path.relative_to(REPO).parts[0]
    for line, target, names in kit_imports(path):
        where = f"{path.relative_to(REPO)}:{line}"
        assert target[0] != "drsan_kit", f"{where}: absolute drsan_kit import; use a relative one"
        assert exists(target) or all(exists(target + [n]) for n in names), f"{where}: {'.'.join(target)} not found"
        assert target[0] == pkg or target[0] in ALLOWED[pkg], f"{where}: {pkg} must not import {target[0]}"
