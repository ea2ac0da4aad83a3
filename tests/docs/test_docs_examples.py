"""Every fenced example in the docs marked runnable runs, offline, on the tiny model.

Mark an example by putting ``<!-- runnable -->`` on the line before its ```bash or ```python fence. Each runs in a
fresh directory with a fresh PROCMEM_HOME; a bash example runs with ``set -euo pipefail``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
_LANGUAGES = {"bash", "python"}
_FENCE = re.compile(r"^```(\w*)")


@dataclass(frozen=True)
class Example:
    """One runnable fenced block: where it is, its language and its code."""

    where: str  # docs/guides/custom-tasks.md:24
    language: str
    code: str


def runnable_examples(paths: list[Path]) -> list[Example]:
    """The blocks marked runnable in ``paths``; a marker not followed by a bash or python fence is an error."""
    examples = []
    for path in paths:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            if line.strip() != MARKER:
                continue
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}"
            fence = _FENCE.match(lines[number]) if number < len(lines) else None
            if fence is None or fence.group(1) not in _LANGUAGES:
                raise ValueError(f"{where}: {MARKER} must be followed by a ```bash or ```python fence")
            end = next((i for i in range(number + 1, len(lines)) if lines[i].startswith("```")), None)
            if end is None:
                raise ValueError(f"{where}: the fenced block is not closed")
            examples.append(Example(where, fence.group(1), "\n".join(lines[number + 1:end]) + "\n"))
    return examples


def _doc_files() -> list[Path]:
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


EXAMPLES = runnable_examples(_doc_files())


def test_the_docs_have_runnable_examples() -> None:
    # The marker is easy to lose in an edit: the getting-started, tasks and verifier examples must stay runnable.
    assert len(EXAMPLES) >= 3, [e.where for e in EXAMPLES]
    assert {e.language for e in EXAMPLES} == _LANGUAGES


def test_a_marker_without_a_fence_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"text\n{MARKER}\n```toml\nx = 1\n```\n")
    with pytest.raises(ValueError, match=r"page.md:2: .* must be followed by"):
        runnable_examples([page])


def test_a_failing_example_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"here:1 failed \(exit 3\)"):
        test_runnable_example(Example("here:1", "bash", "true\nexit 3\n"), tmp_path)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_runnable_example(example: Example, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PROCMEM_HOME": str(tmp_path / "home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # this venv's procmem
    }
    command = ["bash", "-euo", "pipefail", "-c", example.code] if example.language == "bash" else \
        [sys.executable, "-c", example.code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{example.where} failed (exit {done.returncode}):\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
