"""JSONL task files, builtin suites and suite-spec dispatch."""

from __future__ import annotations

import ast
import json
import operator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from procmem.core import ProcmemError, Task, render_prompt
from procmem.tasks import builtin_suites, load_suite
from procmem.verifiers import build_verifier

GOOD = {"id": "a", "prompt": "What is 2 + 3?", "verifier": "numeric:5"}


def _write(tmp_path: Path, *lines: Any, name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_task_file_loads_in_order_with_its_fields(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD, "", {"id": "b", "prompt": "Capital of France?", "verifier": "exact:Paris",
                                       "metadata": {"topic": "geo"}})
    tasks = load_suite(str(path))
    assert [t.id for t in tasks] == ["a", "b"]
    assert tasks[1] == Task(id="b", prompt="Capital of France?", verifier="exact:Paris", suite=str(path),
                            split="train", metadata={"topic": "geo"})
    assert load_suite(str(path), n=1) == tasks[:1]
    assert [t.split for t in load_suite(str(path), split="test")] == ["test", "test"]  # an unsplit file is one pool


def test_split_fields_select_tasks(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GOOD, "split": "train"}, {**GOOD, "id": "b", "split": "test"},
                  {**GOOD, "id": "c", "split": "train"})
    assert [t.id for t in load_suite(str(path), split="train")] == ["a", "c"]
    assert [t.id for t in load_suite(str(path), split="test")] == ["b"]
    assert [t.id for t in load_suite(str(path), split=None)] == ["a", "b", "c"]


def _bad_lines() -> dict[str, tuple[Any, str]]:
    """Second-line content → the problem the error must name."""
    return {
        "truncated": ('{"id": "b", "prompt": ', "not valid JSON"),
        "not-object": ("[1, 2]", "expected a JSON object, got a JSON list"),
        "missing": ({"id": "b", "prompt": "p"}, "missing 'verifier'"),
        "empty-prompt": ({**GOOD, "id": "b", "prompt": "  "}, "'prompt' must be a non-empty string"),
        "int-id": ({**GOOD, "id": 7}, "'id' must be a non-empty string"),
        "unknown-field": ({**GOOD, "id": "b", "answer": "5"}, "unknown field(s) 'answer'"),
        "bad-split": ({**GOOD, "id": "b", "split": "dev"}, "split is 'dev'"),
        "bad-metadata": ({**GOOD, "id": "b", "metadata": [1]}, "metadata is a JSON list"),
        "unknown-kind": ({**GOOD, "id": "b", "verifier": "fuzzy:5"}, "unknown verifier spec 'fuzzy:5'"),
        "malformed-spec": ({**GOOD, "id": "b", "verifier": "numeric:five"}, "malformed verifier spec 'numeric:five'"),
        "duplicate": (GOOD, "duplicate id 'a' (first used on line 1)"),
    }


@pytest.mark.parametrize("case", sorted(_bad_lines()))
def test_a_bad_line_is_located_and_says_how_to_fix_it(tmp_path: Path, case: str) -> None:
    line, problem = _bad_lines()[case]
    path = _write(tmp_path, GOOD, line)
    with pytest.raises(ProcmemError) as err:
        load_suite(str(path), check=build_verifier)
    message = str(err.value)
    assert message.startswith(f"{path}:2: ") and problem in message, message
    assert err.value.fix and "\n" not in message


def test_unknown_verifier_kind_lists_the_known_kinds(tmp_path: Path) -> None:
    path = _write(tmp_path, {**GOOD, "verifier": "fuzzy:5"})
    kinds = r"exact:\.\.\., ledger:\.\.\., math:\.\.\., numeric:\.\.\., regex:\.\.\., rg:\.\.\."
    with pytest.raises(ProcmemError, match=kinds):
        load_suite(str(path), check=build_verifier)


@pytest.mark.parametrize(("lines", "problem"), [
    ((), "the file holds no tasks"),
    (({**GOOD, "split": "train"}, {**GOOD, "id": "b"}), ':2: this line has no "split" while line 1 has one'),
    (({**GOOD, "split": "test"},), "holds no train tasks (0 train, 1 test)"),
])
def test_whole_file_problems(tmp_path: Path, lines: tuple[Any, ...], problem: str) -> None:
    path = _write(tmp_path, *lines)
    with pytest.raises(ProcmemError) as err:
        load_suite(str(path), split="train")
    assert problem in str(err.value)


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({**GOOD, "prompt": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ProcmemError, match="not UTF-8"):
        load_suite(str(path))


@pytest.mark.parametrize(("spec", "problem"), [
    ("no/such/file.jsonl", "is neither a suite spec nor an existing file"),
    ("builtin:nope", "unknown built-in suite 'nope' (use one of: builtin:arith"),
    ("builtin:../arith", "unknown built-in suite"),
])
def test_unknown_suites(spec: str, problem: str) -> None:
    with pytest.raises(ProcmemError) as err:
        load_suite(spec)
    assert problem in str(err.value) and spec in str(err.value)


def test_a_directory_and_bad_arguments_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="is a directory"):
        load_suite(str(tmp_path))
    with pytest.raises(ProcmemError, match="n must be at least 1"):
        load_suite("builtin:arith", n=0)
    with pytest.raises(ProcmemError, match="unknown split 'dev'"):
        load_suite("builtin:arith", split="dev")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- builtin:arith

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Mod: operator.mod}


def _evaluate(expression: str) -> Fraction:
    """Exact arithmetic on + - * / % and numbers (no eval)."""
    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return Fraction(_OPS[type(node.op)](walk(node.left), walk(node.right)))
        raise ValueError(ast.dump(node))
    return walk(ast.parse(expression, mode="eval").body)


def test_builtin_arith_is_listed_and_split() -> None:
    assert "arith" in builtin_suites()
    train, test = load_suite("builtin:arith"), load_suite("builtin:arith", split="test")
    assert len(train) + len(test) == 40 and len(test) >= 8
    assert not {t.id for t in train} & {t.id for t in test}
    assert {t.suite for t in train} == {"builtin:arith"}


def test_every_builtin_gold_passes_its_own_verifier_and_stays_out_of_the_prompt() -> None:
    for name in builtin_suites():
        for task in load_suite(f"builtin:{name}", split=None):
            kind, _, argument = task.verifier.partition(":")
            if kind not in ("exact", "numeric"):
                continue  # other kinds' builtin suites are checked by their owners' tests
            gold = argument.partition("?")[0] if kind == "numeric" else argument
            verifier = build_verifier(task)
            assert verifier.verify(gold).passed, task.id
            assert not verifier.verify("I do not know").passed
            assert "\n" not in task.prompt and render_prompt(task.prompt).endswith("Answer:")
            if "expression" in task.metadata:
                value = _evaluate(task.metadata["expression"])
                assert verifier.verify(str(float(value))).passed, (task.id, value)
