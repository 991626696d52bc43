"""The package's folders are its parts, and data flows down through them (README,
"Architecture"): the faces (``plugin``, ``cli`` and the public helpers) use the checks, the
checks use what is kept (``record``) and how files are read (``formats``), those use the
diagnosis, the diagnosis uses what a checkpoint is (``checkpoint``), and every part may raise
``pytest_ckpt.errors``. Every import counts, inside functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pytest_ckpt"
FACES = ("pytest_ckpt", "pytest_ckpt.plugin", "pytest_ckpt.cli", "pytest_ckpt.weight_norm",
         "pytest_ckpt.compat")
# lower parts come later; a module may import its own part or a lower one
PARTS = ("faces", "checks", "record", "formats", "diagnosis", "checkpoint", "errors")
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    if module in FACES:
        return "faces"
    if module == "pytest_ckpt.errors":
        return "errors"
    return module.split(".")[1]


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports (``from pkg import submodule`` names the
    submodule)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_belongs_to_a_known_part():
    assert {part_of(module) for module in MODULES} <= set(PARTS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_part_or_a_lower_one(module):
    rank = PARTS.index(part_of(module))
    upward = sorted(target for target in GRAPH[module]
                    if PARTS.index(part_of(target)) < rank
                    or (part_of(target) == "faces" and target != module and rank == 0
                        and module != "pytest_ckpt"))
    assert upward == [], f"{module} imports from a part above it (or another face)"


def test_the_diagnosis_rules_import_the_pool_never_the_engine():
    rules = [module for module in MODULES if module.startswith("pytest_ckpt.diagnosis.rules.")]
    assert rules and all("pytest_ckpt.diagnosis.engine" not in GRAPH[rule] for rule in rules)


def test_there_is_no_import_circle():
    """Every import counts: a circle through a function-level import is still a circle."""
    state: dict[str, str] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_the_style_allows(module):
    assert len(MODULES[module].read_text(encoding="utf-8").splitlines()) <= MAX_LINES


@pytest.mark.parametrize("folder", sorted({path.parent for path in MODULES.values()}))
def test_each_folder_says_what_its_part_is(folder):
    docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) > 10
