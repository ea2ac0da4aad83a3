"""The docs' generators (docs/_gen/reference.py), importable by the docs tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="session")
def reference() -> ModuleType:
    """``docs/_gen/reference.py``, the module the site build uses to render the CLI and config reference."""
    spec = importlib.util.spec_from_file_location("procmem_docs_reference", DOCS / "_gen" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
