"""The code verifier: task shape, answer extraction, feedback, the built-in suite, parallel runs.

Every run goes through the real sandbox (see test_verifiers_hostile.py for hostile programs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from procmem.core import Attempt, Episode, ProcmemError, Task
from procmem.verifiers import _sandbox_child as child
from procmem.verifiers import sandbox
from procmem.verifiers.base import build_verifier
from procmem.verifiers.code import CodeSpec, CodeVerifier, extract_code
from procmem.verifiers.sandbox import SandboxLimits, isolation_support

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "procmem" / "tasks" / "data" / "code.jsonl"
REFERENCES = Path(__file__).with_name("hostile") / "code_reference_solutions.json"
ADD = "def add(a, b):\n    return a + b\n"


def _task(metadata: dict[str, Any], verifier: str = "code:add", task_id: str = "t") -> Task:
    return Task(id=task_id, prompt="Write add(a, b).", verifier=verifier, metadata={"timeout_s": 3, **metadata})


def _verify(answer: str, **metadata: Any) -> Any:
    metadata.setdefault("tests", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"])
    return CodeVerifier(CodeSpec.from_task(_task(metadata))).verify(answer)


# --- answer extraction ------------------------------------------------------------------------------------


def test_extract_prefers_the_python_block_that_defines_the_entry_point() -> None:
    answer = "Helper first:\n```python\nX = 1\n```\nThen:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(answer, entry_point="add") == ADD


def test_extract_reads_untagged_and_unterminated_fences_but_not_other_languages() -> None:
    assert extract_code("```\ndef add(a, b):\n    return a + b\n```") == ADD
    assert extract_code("```py\ndef add(a, b):\n    return a + b") == ADD
    assert extract_code("```text\nnot code\n```") is None


def test_extract_keeps_a_bare_program_whole_and_completes_a_body_from_the_stub() -> None:
    bare = "import math\nTAU = 2 * math.pi\n\ndef add(a, b):\n    return a + b"
    assert extract_code(bare, entry_point="add") == bare + "\n"
    stub = 'def add(a, b):\n    """Return a + b."""\n'
    assert extract_code("return a + b", entry_point="add", stub=stub) == stub + "    return a + b\n"
    body = "    s = a + b\n    return s"
    assert extract_code(body, entry_point="add", stub=stub) == stub + body + "\n"
    assert extract_code("I do not know.", entry_point="add") is None


def test_prose_around_a_bare_function_is_dropped_in_the_sandbox() -> None:
    verdict = _verify("Here is my solution:\ndef add(a, b):\n    return a + b\nIt adds the two numbers.")
    assert verdict.passed, verdict.feedback


def test_body_only_answer_passes_with_a_stub() -> None:
    assert _verify("return a + b", stub="def add(a, b):\n    \"\"\"Add.\"\"\"\n").passed


def test_no_code_fails_with_a_hint() -> None:
    verdict = _verify("The answer is 3.")
    assert not verdict.passed and "no Python code found" in verdict.feedback and "def add" in verdict.feedback


# --- task shape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("metadata", "verifier", "message"), [
    ({"tests": ["assert f(1) == 1"]}, "code", "no valid entry point"),
    ({"tests": ["assert add(1, 2) == 3"]}, "code:class", "no valid entry point"),
    ({}, "code:add", "has no tests"),
    ({"tests": "assert add(1, 2) == 3"}, "code:add", "metadata.tests must be a list"),
    ({"tests": ["assert add(1, 2) =="]}, "code:add", "metadata.tests[0] is not valid Python"),
    ({"io": [[1, 2]]}, "code:add", "metadata.io must be a list of [arguments, expected] pairs"),
    ({"io": [[[1], 2]], "timeout_s": 0}, "code:add", "metadata.timeout_s"),
    ({"io": [[[1], 2]], "memory_mb": "lots"}, "code:add", "metadata.memory_mb"),
    ({"io": [[[1], 2]], "setup": 3}, "code:add", "metadata.setup must be a string"),
])
def test_bad_task_metadata_is_a_located_error(metadata: dict[str, Any], verifier: str, message: str) -> None:
    task = Task(id="bad-7", prompt="p", verifier=verifier, metadata=metadata)
    with pytest.raises(ProcmemError) as err:
        CodeSpec.from_task(task)
    assert message in str(err.value) and err.value.where == "task bad-7" and err.value.fix


def test_the_registry_builds_a_code_verifier_from_the_spec() -> None:
    task = Task(id="r", prompt="p", verifier="code:add", metadata={"io": [[[1, 2], 3]]})
    verifier = build_verifier(task)
    assert isinstance(verifier, CodeVerifier) and verifier.spec.entry_point == "add"
    entry = Task(id="r", prompt="p", verifier="code", metadata={"entry_point": "add", "io": [[[1, 2], 3]]})
    assert build_verifier(entry).verify(ADD).passed


# --- verdicts and feedback --------------------------------------------------------------------------------


def test_a_correct_program_passes_with_isolation_details() -> None:
    verdict = _verify(f"```python\n{ADD}```")
    assert verdict.passed and verdict.score == 1.0
    assert verdict.feedback.startswith("all 3 tests passed")
    assert verdict.details["tests_passed"] == verdict.details["tests_total"] == 3
    assert verdict.details["isolation"] == isolation_support().level
    for key in ("namespaces", "network", "filesystem", "user"):
        assert key in verdict.details


def test_feedback_names_the_failing_test_and_result_but_not_the_expected_value() -> None:
    verdict = _verify("def add(a, b):\n    return a + b if a != 2 else 5\n",
                      tests=["assert add(1, 2) == 3", "assert add(2, 2) == 1234567", "assert add(0, 0) == 0"])
    assert not verdict.passed and verdict.score == pytest.approx(2 / 3)
    assert verdict.feedback.startswith("1 of 3 tests failed; test 2: assertion failed; add(2, 2) returned 5")
    assert "1234567" not in verdict.feedback


def test_show_tests_quotes_the_failing_assert() -> None:
    verdict = _verify("def add(a, b):\n    return 0\n", tests=["assert add(1, 2) == 3"], show_tests=True)
    assert "test 1 (`assert add(1, 2) == 3`): assertion failed; add(1, 2) returned 0" in verdict.feedback


def test_feedback_shows_values_as_python_writes_them() -> None:
    task = Task(id="rev", prompt="p", verifier="code:rev", metadata={"io": [[["abc"], "cba"]]})
    verdict = CodeVerifier(CodeSpec.from_task(task)).verify("def rev(s):\n    return s + ' '\n")
    assert "test 1: rev('abc') returned 'abc ', which is not the expected value" in verdict.feedback
    assert "cba" not in verdict.feedback


def test_feedback_gives_the_exception_type_and_message() -> None:
    verdict = _verify("def add(a, b):\n    return a / 0\n")
    assert "test 1: add(1, 2) raised ZeroDivisionError: division by zero" in verdict.feedback


def test_feedback_for_load_errors() -> None:
    assert "SyntaxError" in _verify("def add(a, b):\n    return a +\n").feedback
    assert "does not define a function named add" in _verify("def plus(a, b):\n    return a + b\n").feedback
    assert "failed while loading: NameError" in _verify("undefined_name\ndef add(a, b):\n    return 1\n").feedback


def test_timeout_feedback() -> None:
    verdict = _verify("def add(a, b):\n    while True:\n        pass\n", timeout_s=1)
    assert not verdict.passed and verdict.feedback.startswith("timed out after 1s in test 1 of 3")


def test_io_pairs_match_tuples_to_lists_and_floats_within_tolerance() -> None:
    io = [[[[1, 2]], [2, 1]], [[[0.1, 0.2]], 0.30000000000000004]]
    task = Task(id="io", prompt="p", verifier="code:f", metadata={"io": io})
    verifier = CodeVerifier(CodeSpec.from_task(task))
    answer = "def f(x):\n    return tuple(reversed(x)) if len(x) == 2 and x[0] == 1 else sum(x) + 1e-12\n"
    assert verifier.verify(answer).passed
    wrong = verifier.verify("def f(x):\n    return None\n")
    assert wrong.score == 0.0 and "f([1, 2]) returned None, which is not the expected value" in wrong.feedback


def test_tests_can_catch_builtin_exceptions_and_use_setup() -> None:
    tests = ["try:\n    add(-1, 0)\nexcept ValueError as e:\n    assert 'negative' in str(e)\nelse:\n"
             "    raise AssertionError('no error')",
             "assert add(1, 2) == helper(3)"]
    answer = "def add(a, b):\n    if a < 0:\n        raise ValueError('negative a')\n    return a + b\n"
    assert _verify(answer, tests=tests, setup="def helper(x):\n    return x\n").passed
    assert not _verify(ADD, tests=tests, setup="def helper(x):\n    return x\n").passed


def test_printing_a_little_is_fine_and_captured() -> None:
    task = _task({"io": [[[1, 2], 3]]})
    answer = "def add(a, b):\n    print('adding', a, b)\n    return a + b\n"
    verdict, run = CodeVerifier(CodeSpec.from_task(task)).run(answer)
    assert verdict.passed and run is not None and "adding 1 2" in run.stdout


def test_weak_mode_still_judges_and_says_so() -> None:
    task = _task({"io": [[[1, 2], 3]]})
    verdict = CodeVerifier(CodeSpec.from_task(task), mode="weak").verify(ADD)
    assert verdict.passed and verdict.details["isolation"] == "weak" and verdict.details["network"] == "host"
    assert verdict.feedback.endswith("[sandbox isolation: weak]")
    assert not CodeVerifier(CodeSpec.from_task(task), mode="weak").verify("def add(a, b):\n    return 0\n").passed


def test_a_broken_sandbox_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """If the sandbox itself cannot run, the answer fails and the verdict says why; nothing passes."""
    broken = dataclasses.replace(sandbox.isolation_support(), python="/bin/false")
    monkeypatch.setattr(sandbox, "isolation_support", lambda mode=None: broken)
    verdict = _verify(ADD)
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.feedback.startswith("the sandbox ended without reporting results (exit code 1)")
    assert verdict.feedback.startswith(verdict.details["sandbox_error"])


def test_unknown_sandbox_mode_is_an_error() -> None:
    with pytest.raises(ProcmemError, match="unknown sandbox mode"):
        isolation_support("paranoid")


def test_verdict_details_survive_an_episode_round_trip() -> None:
    verdict = _verify(ADD)
    episode = Episode(task=_task({"io": [[[1, 2], 3]]}), attempts=(Attempt(answer=ADD, verdict=verdict),),
                      model_id="m")
    again = Episode.from_dict(json.loads(json.dumps(episode.to_dict())))
    assert again.attempts[0].verdict == verdict


def test_sandbox_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError):
        SandboxLimits(memory_mb=0)


# --- values crossing the sandbox boundary -----------------------------------------------------------------


@pytest.mark.parametrize("value", [
    None, True, 0, -(10 ** 30), 1.5, "é\n", b"\x00\xff", 2 + 3j, [1, [2, (3,)]], (), {"a": 1, (1, 2): [3]},
    {1, 2}, frozenset({"x"}), {"d": 1}, [{"t": [1]}],
])
def test_plain_values_round_trip(value: object) -> None:
    data = json.loads(json.dumps(child.encode(value)))
    again = child.decode(data)
    assert again == value and type(again) is type(value)


def test_nan_and_unsupported_values() -> None:
    assert math.isnan(child.decode(json.loads(json.dumps(child.encode(float("nan"))))))

    class Sneaky(int):
        pass

    for bad in (Sneaky(1), object(), [1, {2: object()}]):
        with pytest.raises(TypeError):
            child.encode(bad)
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValueError):
        child.encode(deep)
    for malformed in ({"x": [1]}, {"a": 1, "b": 2}, {"c": [1]}, {"d": [[1]]}):
        with pytest.raises((ValueError, TypeError)):
            child.decode(malformed)


def test_same_compares_like_the_docs_say() -> None:
    assert child.same((1, [2.0000000001]), [1, (2,)])
    assert child.same({"a": (1,)}, {"a": [1]})
    assert not child.same("1", 1) and not child.same(1.0, "1") and not child.same([1], [1, 2])
    assert not child.same(float("nan"), float("nan"))


# --- the built-in suite, verified in parallel -------------------------------------------------------------


def _suite() -> list[Task]:
    return [Task.from_dict({**json.loads(line), "suite": "code"}) for line in SUITE.read_text().splitlines()
            if line.strip()]


def test_builtin_suite_is_well_formed() -> None:
    tasks = _suite()
    assert len(tasks) >= 20 and len({t.id for t in tasks}) == len(tasks)
    assert {t.split for t in tasks} == {"train", "test"}
    references = json.loads(REFERENCES.read_text())
    assert set(references) == {t.id for t in tasks}
    for task in tasks:
        spec = CodeSpec.from_task(task)
        assert task.metadata["stub"] in task.prompt and f"def {spec.entry_point}(" in task.prompt
        assert len(spec.tests) >= 3


def test_builtin_suite_references_pass_and_wrong_answers_fail_in_parallel() -> None:
    tasks = _suite()
    references = json.loads(REFERENCES.read_text())
    jobs: list[tuple[Task, str, bool]] = []
    for task in tasks:
        entry = CodeSpec.from_task(task).entry_point
        jobs.append((task, f"```python\n{references[task.id]}```", True))
        jobs.append((task, f"def {entry}(*args, **kwargs):\n    return None\n", False))
    jobs.append((tasks[0], "return s[::-1]", True))  # a body completing the stub

    def judge(job: tuple[Task, str, bool]) -> tuple[bool, str]:
        verdict = build_verifier(job[0]).verify(job[1])
        return verdict.passed, verdict.feedback

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(judge, jobs))
    pairs = zip(jobs, outcomes, strict=True)
    wrong = [(job[0].id, job[2], feedback) for job, (passed, feedback) in pairs if passed != job[2]]
    assert wrong == []
