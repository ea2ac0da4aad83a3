"""The CLI starts light: importing it, and running the commands that need no model, imports neither
torch, transformers, sentence-transformers nor litellm (a fresh ``python -I`` process for each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "sentence_transformers", "litellm")

# Runs the Typer app in-process with the given arguments, then prints the exit code and the heavy
# modules that were imported, as the last line of stdout.
_PROBE = f"""
import json, sys
from procmem.cli import app
try:
    code = app(sys.argv[1:], standalone_mode=False)
except SystemExit as exit_:
    code = exit_.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"code": code or 0, "heavy": heavy}}))
"""


def _probe(*args: str) -> dict[str, object]:
    """``{"code": exit code, "heavy": [...]}`` of ``procmem ARGS``; ``"output"``: the command's --json line."""
    done = subprocess.run([sys.executable, "-I", "-c", _PROBE, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    result: dict[str, object] = json.loads(lines[-1])
    if "--json" in args and len(lines) > 1:
        result["output"] = json.loads(lines[-2])
    return result


@pytest.fixture(scope="module")
def home_with_an_episode(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A home whose memory holds one recorded episode (recorded with the real MiniLM embedder, here)."""
    from procmem.core import Attempt, Episode, Home, Task, Verdict
    from procmem.memory import open_memory

    home = Home(tmp_path_factory.mktemp("weight") / "home").ensure()
    task = Task(id="t1", prompt="What is 2 + 2?", verifier="exact:4")
    episode = Episode(task=task, attempts=(Attempt(answer="4", verdict=Verdict(passed=True, score=1.0)),),
                      model_id="test")
    memory = open_memory(home.chroma)
    try:
        memory.record(episode)
    finally:
        memory.close()
    return home.root, episode.id


def test_importing_the_cli_leaves_the_heavy_libraries_out() -> None:
    code = f"import sys, procmem.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_checker_sees_a_heavy_import() -> None:
    """The probe itself can fail: a command that loads a model shows up."""
    done = subprocess.run([sys.executable, "-I", "-c", "import sys, procmem.cli, litellm; "
                           f"print([m for m in {HEAVY!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "litellm" in done.stdout


def test_help_is_light() -> None:
    assert _probe("--help") == {"code": 0, "heavy": []}


@pytest.mark.parametrize(("command", "shows"), [
    (("memory", "stats"), '"experience": 1'),
    (("memory", "ls"), "EPISODE"),
    (("memory", "show", "EPISODE"), "EPISODE"),
    (("adapters", "ls"), '"adapters": []'),
    (("keys", "ls"), "[]"),
])
def test_reading_memory_and_adapters_is_light(home_with_an_episode: tuple[Path, str], command: tuple[str, ...],
                                              shows: str) -> None:
    root, episode_id = home_with_an_episode
    args = [episode_id if part == "EPISODE" else part for part in command]
    result = _probe("--home", str(root), *args, "--json")
    assert (result["code"], result["heavy"]) == (0, [])
    assert shows.replace("EPISODE", episode_id) in json.dumps(result["output"], sort_keys=True)


def test_an_unknown_adapter_is_reported_without_loading_torch(tmp_path: Path) -> None:
    assert _probe("--home", str(tmp_path / "home"), "adapters", "show", "promoted") == {"code": 2, "heavy": []}


@pytest.mark.parametrize(("task", "answer"), [
    ({"id": "t", "prompt": "What is 2 + 2?", "verifier": "exact:4"}, "4"),
    ({"id": "code/sq", "prompt": "Write sq(x).", "verifier": "code:sq",
      "metadata": {"entry_point": "sq", "tests": ["assert sq(3) == 9"], "answer_format": "code"}},
     "```python\ndef sq(x):\n    return x * x\n```"),
])
def test_verify_is_light(tmp_path: Path, task: dict[str, object], answer: str) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(task) + "\n")
    result = _probe("--home", str(tmp_path / "home"), "verify", "--task", str(path), "--answer", answer, "--json")
    assert (result["code"], result["heavy"]) == (0, [])
    assert result["output"]["passed"] is True  # type: ignore[index]


def test_the_help_texts_level_names_are_memorys_levels() -> None:
    """memory_cmd spells the levels for its help so that --help need not import procmem.memory."""
    from procmem.cli.memory_cmd import LEVEL_NAMES
    from procmem.memory import LEVELS

    assert LEVEL_NAMES == LEVELS
