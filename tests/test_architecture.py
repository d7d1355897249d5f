"""docs/ARCHITECTURE.md's layer table is the import rule: every module of basel_app imports only the
standard library, its own layer, and what its row allows, and a row allows only layers listed above it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from basel_app.config import names
from basel_app.evaluation.benchmarks import BENCHMARKS
from basel_app.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "basel_app"


def layer_table() -> dict[str, set[str] | None]:
    """{layer: what it may import} from the table's rows, in order; None means everything."""
    rows: dict[str, set[str] | None] = {}
    for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        match = re.match(r"\| `basel_app/([\w.]+?)/?` \|.*\|\s*([^|]*?)\s*\|$", line)
        if match:
            allowed = match.group(2).strip()
            rows[match.group(1).removesuffix(".py")] = None if allowed == "everything" else {
                name.strip() for name in allowed.split(",") if name.strip()}
    return rows


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imports_of(path: Path) -> set[str]:
    """The layers (basel_app.<layer>) and top-level third-party modules `path` imports, its own layer excluded."""
    layer, found = layer_of(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue  # relative imports stay inside their package
        for module in modules:
            parts = module.split(".")
            if parts[0] == "basel_app":
                found.add(parts[1] if len(parts) > 1 else "__init__")
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                found.add(parts[0])
    return found - {layer}


TABLE = layer_table()
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_table_names_every_layer():
    assert {layer_of(path) for path in MODULES} == set(TABLE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_each_module_imports_only_what_its_layer_may(path):
    allowed = TABLE[layer_of(path)]
    if allowed is None:
        return
    assert imports_of(path) <= allowed, f"{path.relative_to(REPO)} imports {sorted(imports_of(path) - allowed)}"


def test_a_layer_imports_only_layers_above_it():
    order = list(TABLE)
    for position, (layer, allowed) in enumerate(TABLE.items()):
        for name in (allowed or set()) & set(order):
            assert order.index(name) < position, f"{layer} may import {name}, which is not above it"


def test_the_config_names_are_the_registries_names():
    """The config validates against config/names.py; the code registers what it implements."""
    assert set(TASKS) == set(names.TASK_NAMES)
    assert set(BENCHMARKS) == set(names.BENCHMARK_NAMES)
    assert set(names.METHODS) == set(names.PRUNING_SCORERS) | set(names.ONE_SHOT_METHODS) | set(names.DENSE_METHODS)
    assert set(names.ABLATION_METHODS["score"]) <= set(names.PRUNING_METHODS)
