"""CLI fixtures: a task file the tiny model can pass and fail, and an in-process runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    """Six tasks: odd ones accept any answer, even ones accept none (the tiny model emits noise)."""
    lines = [
        {"id": f"q{i}", "prompt": f"Say something about {i}.",
         "verifier": "regex:(?s).*" if i % 2 else "exact:an answer nobody gives"}
        for i in range(6)
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
