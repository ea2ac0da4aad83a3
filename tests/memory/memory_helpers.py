"""Helpers shared by the memory tests: episode builders and a SCRIPTED POLICY.

``ScriptedPolicy`` is NOT a model. It is a deterministic stand-in that answers reflection and pattern
prompts with fixed, realistic texts (what a capable policy would write), so that the reflection
pipeline can be tested end to end: prompt → generate → the real parser → validation → dedup → store.
The real tiny model is run through the same pipeline in test_memory_reflection.py (its output is noise,
so it must come out as unparseable, counted and skipped).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from procmem.core import Attempt, Episode, GenerationConfig, Task, Verdict
from procmem.memory._entries import Entry, entry_id

SUM_REFLECTION = ("STRATEGY: Add the ones digits first, then the tens digits, and carry when needed.\n"
                  "LESSON: The answer was written in words -> answer with the number in digits only.")
SUM_PATTERN = " Answer with the final number only, written in digits."
SUM_LESSON_COMPLETION = (" The answer was written in words -> answer with the number in digits only.\n"
                         "STRATEGY: Add the ones digits first, then the tens digits, and carry when needed.")
SUM_STRATEGY_COMPLETION = " Add the ones digits first, then the tens digits, and carry when needed."


@dataclass(frozen=True)
class ScriptedGeneration:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


class ScriptedPolicy:
    """A scripted reflector (see the module docstring). ``reply`` maps a prompt to the text to return;
    every prompt it receives is kept in ``prompts``."""

    def __init__(self, reply: Callable[[str], str] | None = None, *, model_id: str = "scripted-policy",
                 adapter_version: str | None = None, finish_reason: str = "stop") -> None:
        self._reply = reply or default_reply
        self._finish_reason = finish_reason
        self._model_id = model_id
        self._adapter = adapter_version
        self._lock = threading.Lock()
        self.prompts: list[str] = []

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def adapter_version(self) -> str | None:
        return self._adapter

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[ScriptedGeneration]:
        with self._lock:
            self.prompts.extend(prompts)
        return [ScriptedGeneration(self._reply(p), len(p.split()), len(self._reply(p).split()), self._finish_reason)
                for p in prompts]


def default_reply(prompt: str) -> str:
    """What a capable policy would complete: the prompts end with ``PATTERN:``, ``LESSON:`` or ``STRATEGY:``
    (the primer); a sum gets the sum advice, anything else a generic strategy."""
    if prompt.endswith("PATTERN:"):
        return SUM_PATTERN
    is_sum = re.search(r"Problem: What is \d+ \+ \d+\?", prompt) is not None
    if prompt.endswith("LESSON:"):
        return SUM_LESSON_COMPLETION if is_sum else " Answered without reading the question -> read it twice first."
    return SUM_STRATEGY_COMPLETION if is_sum else " Read the question twice and answer exactly what it asks for."


def episode(task_id: str, prompt: str, answers: Sequence[str], *, passed: bool = True, split: str = "train",
            suite: str = "rg:chain_sum", model_id: str = "scripted-policy", adapter: str | None = None,
            memory_ids: Sequence[str] = (), finished_at: str | None = None, gold: str = "gold-never-shown"
            ) -> Episode:
    """An episode whose last attempt passes iff ``passed``; earlier attempts fail with feedback."""
    attempts = []
    for i, answer in enumerate(answers):
        ok = passed and i == len(answers) - 1
        feedback = "" if ok else f"expected an integer; got {answer!r}"
        attempts.append(Attempt(answer, Verdict(ok, 1.0 if ok else 0.0, feedback)))
    task = Task(id=task_id, prompt=prompt, verifier=f"exact:{gold}", suite=suite, split=split)  # type: ignore[arg-type]
    extra = {"started_at": finished_at, "finished_at": finished_at} if finished_at else {}
    return Episode(task=task, attempts=tuple(attempts), model_id=model_id, adapter_version=adapter,
                   memory_ids=tuple(memory_ids), **extra)


SUMS = [("s1", "What is 23 + 45?", ["sixty-eight", "68"]),
        ("s2", "What is 17 + 62?", ["seventy nine", "79"]),
        ("s3", "What is 31 + 12?", ["forty three", "43"])]


def entry(text: str, *, kind: str = "strategy", problem: str = "p-one", split: str = "train",
          policy: str = "scripted-policy@base", episodes: Sequence[str] = ("e1",), updated_at: str = "2026-01-01",
          **fields: object) -> Entry:
    """An insight (or a pattern, with kind="pattern") written directly, as reflection would."""
    level = "pattern" if kind == "pattern" else "insight"
    return Entry(id=entry_id(level, kind, split, problem, text), level=level, kind=kind, text=text,
                 suite="rg:chain_sum", split=split, policy_version=policy, reflector=policy,
                 problem=problem if level == "insight" else "", problem_ids=(problem,),
                 source_episode_ids=tuple(episodes), evidence={problem: {"episodes": 1, "passed": 1, "attempts": 1}},
                 created_at=updated_at, updated_at=updated_at, **fields)


def index_contents(store: Any, index: Any) -> dict[str, str]:
    """What a ChromaStore's index collection holds: group id -> the id of the record its copy stands for."""
    side = store._conn.client().get_collection(f"procmem_index_{index.name}", embedding_function=None)
    held = side.get(include=["metadatas"])
    return {gid: meta["_procmem_id"] for gid, meta in zip(held["ids"], held["metadatas"], strict=True)}


def index_expected(records: Sequence[Any], index: Any) -> dict[str, str]:
    """What an index must hold for these records: each group's representative, its smallest id."""
    found: dict[str, str] = {}
    for record in records:
        group = index.group(record.metadata)
        if group is not None:
            gid = f"{group[0]}:{group[1]}"
            found[gid] = min(found.get(gid, record.id), record.id)
    return found
