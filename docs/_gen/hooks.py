"""MkDocs hooks (mkdocs.yml: ``hooks``): lays out the package sources for the Python API pages before
mkdocstrings reads its configuration (it resolves its search ``paths`` once, in its own ``on_config``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference

# Outside docs/, so that `mkdocs serve` does not watch it, and in build/, which git ignores.
SOURCE_TREE = reference.ROOT / "build" / "docs-src"


@event_priority(100)  # before mkdocstrings' on_config
def on_config(config: Any) -> Any:
    reference.source_tree(SOURCE_TREE)
    return config
