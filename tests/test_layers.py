"""The layer rule: imports point one way, down (docs/concepts/architecture.md).

Every ``.py`` file of the installed package directories (``[tool.setuptools] package-dir`` in
pyproject.toml: ``procmem/``, and ``agent/``, ``memory/`` ... installed as ``procmem.agent`` ...) is parsed,
and every import in it is checked: at module level, inside functions, under ``if TYPE_CHECKING:``, relative
ones, and ``import_module("...")`` with a literal name. A module may import its own package or a package of
a lower rank; two packages of one rank may not import each other.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

RANKS: dict[str, int] = {
    "procmem": 0,  # the root package: its __init__ holds only the version
    "procmem.core": 0,
    "procmem.llm": 1,
    "procmem.tasks": 1,
    "procmem.verifiers": 2,
    "procmem.memory": 2,
    "procmem.agent": 3,
    "procmem.distill": 4,
    "procmem.serve": 5,
    "procmem.testing": 5,  # the conformance suites check the seams of memory, llm, verifiers and distill
    "procmem.eval": 6,  # the experiment and the benchmarks measure every layer, the gateway too
    "procmem.integrations": 6,  # LiteLLM callback and MCP server: write through serve's ingest, honour its keys
    "procmem.cli": 7,
}
"""Each package's rank: it may import packages of a lower rank only (and itself)."""


def package_of(module: str) -> str | None:
    """The ranked package a ``procmem`` module belongs to (``procmem.memory.base`` -> ``procmem.memory``);
    None for modules outside procmem."""
    parts = module.split(".")
    if parts[0] != "procmem":
        return None
    return "procmem" if len(parts) == 1 else ".".join(parts[:2])


def imports_of(module: str, source: str, *, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source``, relative ones made absolute."""
    tree = ast.parse(source)
    # A module's own package, the anchor of its relative imports: itself for an __init__.
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = anchor[: len(anchor) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from procmem import agent`` imports procmem.agent
                yield node.lineno, f"{target}.{alias.name}"
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "import_module") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")


def violations(module: str, source: str, where: str, *, is_package: bool = False) -> list[str]:
    """Every import in ``source`` (the module ``module``, read from ``where``) that breaks the rule."""
    own = package_of(module)
    if own not in RANKS:
        return [f"{where}: package {own} has no rank (add it to RANKS in tests/test_layers.py and to the "
                "layer table in docs/concepts/architecture.md)"]
    found: list[str] = []
    seen: set[tuple[int, str | None]] = set()
    for line, target in imports_of(module, source, is_package=is_package):
        other = package_of(target)
        if other is None or other == own or target == "procmem" or (line, other) in seen:
            continue  # outside procmem, its own package, or the root namespace (``from procmem import ...``)
        seen.add((line, other))
        if other not in RANKS:
            if not other.split(".")[1].startswith("_"):  # ``from procmem import __version__`` is no package
                found.append(f"{where}:{line}: {own} imports {target}, a package without a rank")
            continue
        if RANKS[other] >= RANKS[own]:
            how = "sideways (same rank)" if RANKS[other] == RANKS[own] else "upward"
            found.append(f"{where}:{line}: {own} (rank {RANKS[own]}) imports {target} (rank {RANKS[other]}): "
                         f"{how}; imports point down only")
    return found


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """The installed packages' source directories, from pyproject.toml (``procmem.agent`` -> ``agent/``)."""
    settings = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: root / path for name, path in settings["package-dir"].items()}


def source_modules(root: Path = ROOT) -> Iterator[tuple[str, Path, bool]]:
    """``(module name, file, is a package __init__)`` for every .py file of the installed packages."""
    dirs = package_dirs(root)
    mapped = {path.resolve() for name, path in dirs.items() if name != "procmem"}
    for name, directory in dirs.items():
        for path in sorted(directory.rglob("*.py")):
            if name == "procmem" and any(parent.resolve() in mapped for parent in path.parents):
                continue
            parts = [*name.split("."), *path.relative_to(directory).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            yield ".".join(parts[:-1] if is_package else parts), path, is_package


# ------------------------------------------------------------------------------------------------ tests


def test_every_installed_package_directory_is_checked() -> None:
    names = set(package_dirs())
    assert {"procmem", "procmem.agent", "procmem.memory", "procmem.distill", "procmem.verifiers",
            "procmem.eval"} <= names
    modules = {module for module, _, _ in source_modules()}
    for expected in ("procmem.core.registry", "procmem.cli.app", "procmem.agent.graph", "procmem.memory.base",
                     "procmem.distill._run", "procmem.verifiers.rg", "procmem.eval.experiment", "procmem.tasks.rg"):
        assert expected in modules
    assert len(modules) > 60


def test_the_source_tree_keeps_the_layer_rule() -> None:
    found = [problem for module, path, is_package in source_modules()
             for problem in violations(module, path.read_text(), str(path.relative_to(ROOT)), is_package=is_package)]
    assert not found, "layer rule broken:\n" + "\n".join(found)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("procmem.memory.bad", "from procmem.agent import AgentDeps\n", "upward"),
    ("procmem.memory.bad", "import procmem.eval.report\n", "upward"),
    ("procmem.memory.bad", "from procmem.verifiers import build_verifier\n", "sideways"),
    ("procmem.llm.bad", "from procmem.tasks import load_suite\n", "sideways"),
    ("procmem.core.bad", "from procmem.llm import LLM\n", "upward"),
    ("procmem.memory.bad", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                           "    from procmem.distill.traces import Trace\n", "upward"),
    ("procmem.memory.bad", "def f():\n    from procmem.cli import app\n", "upward"),
    ("procmem.memory.bad", "from ..agent import graph\n", "upward"),
    ("procmem.memory.bad", "from .. import distill\n", "upward"),
    ("procmem.tasks.bad", "from importlib import import_module\nimport_module('procmem.verifiers.rg')\n", "upward"),
    ("procmem.verifiers.bad", "from procmem.memory import open_memory\n", "sideways"),
    ("procmem.serve.bad", "from procmem.eval import experiment\n", "upward"),
    ("procmem.testing.bad", "from procmem.serve import app\n", "sideways"),
    ("procmem.memory.bad", "from procmem.gadgets import x\n", "without a rank"),
])
def test_a_violating_module_is_reported(module: str, source: str, expected: str) -> None:
    found = violations(module, source, "bad.py")
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith("bad.py:")


def test_a_package_without_a_rank_is_reported() -> None:
    assert "has no rank" in violations("procmem.gadgets.x", "import os\n", "gadgets/x.py")[0]


@pytest.mark.parametrize(("module", "source"), [
    ("procmem.verifiers.ok", "from procmem.tasks.rg import rg_dataset\n"),  # named exception: a lower rank
    ("procmem.memory.ok", "from procmem.llm import LLM\nfrom procmem.core import Task\n"),
    ("procmem.distill.ok", "from procmem.agent import AgentDeps\nfrom procmem.memory import Retriever\n"),
    ("procmem.cli.ok", "from procmem.eval import EvalConfig\nfrom procmem.distill import DistillConfig\n"),
    ("procmem.memory.ok", "from . import base\nfrom .base import LEVELS\nimport numpy\n"),
    ("procmem.core.ok", "from procmem import __version__\n"),
])
def test_imports_that_point_down_or_stay_home_pass(module: str, source: str) -> None:
    assert violations(module, source, "ok.py") == []


def test_relative_imports_of_a_package_init_resolve_from_the_package_itself() -> None:
    found = violations("procmem.memory", "from .procedural import ProceduralMemory\nfrom ..agent import x\n",
                       "memory/__init__.py", is_package=True)
    assert len(found) == 1 and "procmem.agent" in found[0]
