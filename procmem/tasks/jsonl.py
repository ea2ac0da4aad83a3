"""JSONL task files: one task per line.

Each non-blank line is a JSON object::

    {"id": "add-1", "prompt": "What is 2 + 3? Answer with a number.", "verifier": "numeric:5",
     "split": "train", "metadata": {"topic": "addition"}}

- ``id``, ``prompt`` and ``verifier`` are required non-empty strings; ids are unique in the file.
- ``verifier`` is a verifier spec (see :mod:`procmem.verifiers`); given ``check=build_verifier``, it is
  checked when the file loads, so a bad spec fails before any solving, located as ``file:line``. (The
  verifiers sit above the task suites, so the check is passed in rather than imported.)
- ``split`` (``train`` or ``test``) is optional, but either every line has one or none does. A file
  without splits is one unsplit pool: its tasks are returned for whichever split is asked.
- ``metadata`` is an optional object for the verifier (it is never shown to the model).

Any problem is a ProcmemError located as ``file:line``, saying what is wrong and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procmem.core import ProcmemError, Split, Task

__all__ = ["FIELDS", "TaskCheck", "load_jsonl"]

TaskCheck = Callable[[Task], object]
"""Checks one loaded task and raises a ProcmemError on a bad one, e.g. ``procmem.verifiers.build_verifier``
(is the task's verifier spec valid?)."""

FIELDS = ("id", "prompt", "verifier", "split", "metadata")
_EXAMPLE = '{"id": "q1", "prompt": "What is 2 + 3?", "verifier": "numeric:5"}'


def load_jsonl(path: Path, *, suite: str, split: Split | None = "train", n: int | None = None,
               check: TaskCheck | None = None) -> list[Task]:
    """The tasks of ``split`` in file order (all of them for ``split=None``), at most ``n``; ``check`` is run
    on every task as it loads (its ProcmemError is located at the task's line)."""
    lines = _read(path)
    parsed: list[tuple[int, Task, bool]] = []
    first_line: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        task, has_split = _task(_object(text, where), where, suite=suite, split=split or "train")
        if task.id in first_line:
            raise ProcmemError(f"duplicate id {task.id!r} (first used on line {first_line[task.id]})", where=where,
                               fix="give every task a unique id")
        first_line[task.id] = number
        if check is not None:
            _check(task, where, check)
        parsed.append((number, task, has_split))
    if not parsed:
        raise ProcmemError("the file holds no tasks", where=str(path), fix=f"write one task per line, e.g. {_EXAMPLE}")
    _check_split_fields(path, parsed)
    tasks = [task for _, task, _ in parsed if split is None or task.split == split]
    if not tasks:
        counts = {s: sum(t.split == s for _, t, _ in parsed) for s in ("train", "test")}
        raise ProcmemError(f"holds no {split} tasks ({counts['train']} train, {counts['test']} test)", where=str(path),
                           fix="ask for the other --split, or mark some lines with that split")
    return tasks if n is None else tasks[:n]


def _read(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ProcmemError(f"not UTF-8 text ({err.reason} at byte {err.start})", where=str(path),
                           fix="save the task file as UTF-8 JSONL") from None
    except OSError as err:
        raise ProcmemError(f"cannot read the task file ({err.strerror or err})", where=str(path),
                           fix="check the path and its permissions") from None


def _object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProcmemError(f"not valid JSON ({err.msg} at column {err.colno})", where=where,
                           fix=f"write one complete JSON object per line, e.g. {_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise ProcmemError(f"expected a JSON object, got a JSON {type(value).__name__}", where=where,
                           fix=f"write one object per line, e.g. {_EXAMPLE}")
    return value


def _task(obj: dict[str, Any], where: str, *, suite: str, split: Split) -> tuple[Task, bool]:
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ProcmemError(f"unknown field(s) {', '.join(map(repr, unknown))}", where=where,
                           fix=f"use only {', '.join(FIELDS)} (put anything else under metadata)")
    values = {key: _text(obj, key, where) for key in ("id", "prompt", "verifier")}
    declared = obj.get("split")
    if declared is not None and declared not in ("train", "test"):
        raise ProcmemError(f"split is {declared!r}", where=where, fix='use "train" or "test", or leave split out')
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ProcmemError(f"metadata is a JSON {type(metadata).__name__}", where=where,
                           fix='make metadata a JSON object, e.g. "metadata": {"topic": "sums"}')
    task = Task(id=values["id"], prompt=values["prompt"], verifier=values["verifier"], suite=suite,
                split=declared or split, metadata=metadata)
    return task, declared is not None


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise ProcmemError(f"missing {key!r}", where=where,
                           fix=f"every line needs id, prompt and verifier, e.g. {_EXAMPLE}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise ProcmemError(f"{key!r} must be a non-empty string, got {json.dumps(value)[:40]}", where=where,
                           fix=f'write it as "{key}": "..."')
    return value


def _check(task: Task, where: str, check: TaskCheck) -> None:
    try:
        check(task)
    except ProcmemError as err:
        raise ProcmemError(err.message, where=where, fix=err.fix) from None


def _check_split_fields(path: Path, parsed: list[tuple[int, Task, bool]]) -> None:
    with_split = [number for number, _, has in parsed if has]
    if with_split and len(with_split) != len(parsed):
        number = next(number for number, _, has in parsed if not has)
        raise ProcmemError(f'this line has no "split" while line {with_split[0]} has one', where=f"{path}:{number}",
                           fix='give every line a "split" ("train" or "test"), or none of them')
