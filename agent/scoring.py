"""Scoring without the agent loop: one answer per task, verified (pass@1).

The promotion gate (``distill/gate.py``) and the evidence experiment (``eval/experiment.py``) both answer
held-out tasks this way: the prompt rendered exactly as at inference (``render_prompt(question)``, with
memory only when a retriever is given), each task's own decoding settings (``generate_for_tasks``), the
answer cut by ``extract_answer`` in the task's answer format, and the task's verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from procmem.core import GenerationConfig, Task, extract_answer, render_prompt
from procmem.llm import LLM, generate_for_tasks
from procmem.memory import Retriever
from procmem.verifiers import build_verifier

__all__ = ["BATCH", "ItemScore", "score_tasks"]

BATCH = 16
"""Tasks per ``generate`` call: batched generation without losing progress granularity."""


@dataclass(frozen=True)
class ItemScore:
    """One task's answer and verdict."""

    task_id: str
    answer: str
    passed: bool
    completion_tokens: int
    well_formed: bool | None = None
    """Whether the answer had the expected form (the verifier's ``details["well_formed"]``; None when it does
    not say)."""


def score_tasks(llm: LLM, suites: Mapping[str, Sequence[Task]], generation: GenerationConfig, *,
                retriever: Retriever | None = None, memory_k: int = 0,
                on_progress: Callable[[int], None] | None = None) -> dict[str, list[ItemScore]]:
    """Answer every task once and verify each answer; per suite, the results in task order.

    Memory-free unless ``retriever`` is given (then ``memory_k`` entries go in the prompt).
    ``on_progress(n)`` is called after each batch of ``n`` tasks.
    """
    results: dict[str, list[ItemScore]] = {}
    for suite, tasks in suites.items():
        items: list[ItemScore] = []
        for start in range(0, len(tasks), BATCH):
            chunk = tasks[start:start + BATCH]
            requests = [(task, _prompt(task, retriever, memory_k)) for task in chunk]
            for task, out in zip(chunk, generate_for_tasks(llm, requests, generation), strict=True):
                answer = extract_answer(out.text, task.answer_format)
                verdict = build_verifier(task).verify(answer)
                formed = verdict.details.get("well_formed")
                items.append(ItemScore(task.id, answer, verdict.passed, out.completion_tokens,
                                       formed if isinstance(formed, bool) else None))
            if on_progress is not None:
                on_progress(len(chunk))
        results[suite] = items
    return results


def _prompt(task: Task, retriever: Retriever | None, memory_k: int) -> str:
    memory = retriever.retrieve(task, memory_k).text if retriever is not None and memory_k else ""
    return render_prompt(task.prompt, memory=memory, answer_format=task.answer_format)
