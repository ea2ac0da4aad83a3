"""Issue 6, "done means": `procmem verify --task T --answer A --json` on a code task, run as a user runs it
(a real `procmem` process and the real sandbox): every hostile answer fails with a reason, a correct one
passes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import PROCMEM

SECRET = "procmem-test-secret-value-123456"

TASK = {
    "id": "code/add", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "verifier": "code:add",
    "metadata": {"entry_point": "add", "answer_format": "code", "timeout_s": 3,
                 "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
}

HOSTILE = {
    "infinite loop": ("def add(a, b):\n    while True:\n        pass\n", "timed out"),
    "early exit": ("import os\nos._exit(0)\ndef add(a, b):\n    return 0\n", ""),
    "sys.exit before the tests": ("import sys\nsys.exit(0)\n", ""),
    "assert overridden": ("import builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n"
                          "def add(a, b):\n    return 0\n", ""),
    "reads the secret": (f"import os\ndef add(a, b):\n    assert os.environ.get('SECRET_TOKEN') == '{SECRET}'\n"
                         "    return a + b\n", ""),
    "memory bomb": ("def add(a, b):\n    x = bytearray(1 << 34)\n    return a + b\n", "MemoryError"),
    "recursion bomb": ("def add(a, b):\n    return add(a, b)\n", "RecursionError"),
}


def _verify(task: Path, answer: str) -> tuple[int, dict[str, object]]:
    env = {**os.environ, "SECRET_TOKEN": SECRET}
    done = subprocess.run([str(PROCMEM), "verify", "--task", str(task), "--answer", answer, "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("code") / "add.jsonl"
    path.write_text(json.dumps(TASK) + "\n")
    return path


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_hostile_answer_fails_with_a_reason(task: Path, name: str) -> None:
    answer, reason = HOSTILE[name]
    code, verdict = _verify(task, answer)
    assert code == 0 and verdict["passed"] is False and verdict["score"] < 1.0
    feedback = str(verdict["feedback"])
    assert feedback.strip() and reason in feedback, feedback
    assert SECRET not in json.dumps(verdict)


def test_a_correct_answer_passes(task: Path) -> None:
    code, verdict = _verify(task, "```python\ndef add(a, b):\n    return a + b\n```")
    assert code == 0 and verdict["passed"] is True and verdict["score"] == 1.0
