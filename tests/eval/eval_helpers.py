"""Shared setup of the eval tests: small JSONL suites whose outcome does not depend on the model."""

from __future__ import annotations

import json
from pathlib import Path


def jsonl_suite(path: Path, name: str, passable: bool, *, n_train: int, n_test: int) -> str:
    """A JSONL suite the tiny model passes (any answer is right) or fails (no answer is right), with ``n_train``
    train and ``n_test`` test items; returns its path as a suite spec."""
    verifier = "regex:(?s).*" if passable else "exact:an answer nobody gives"
    rows = [{"id": f"{name}-{split}-{i}", "prompt": f"{name} question {i} ({split})?", "verifier": verifier,
             "split": split} for split, n in (("train", n_train), ("test", n_test)) for i in range(n)]
    file = path / f"{name}.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(file)
