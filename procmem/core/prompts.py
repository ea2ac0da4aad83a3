"""The one prompt format. The agent, the distill teacher and the student all render through here,
so training and inference see exactly the same text.

The bundled model is a base model without a chat template, so prompts are plain text that ends in
``Answer:``. A ``line`` answer is the completion's first line; a ``code`` answer (a program, see
``Task.answer_format``) is the whole completion, which the task's stop sequences end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from procmem.core.types import AnswerFormat

__all__ = ["ANSWER_STOP", "CODE_STOP", "PriorAttempt", "extract_answer", "render_completion", "render_prompt"]

ANSWER_STOP = "\n"
"""Generation stops here: a ``line`` answer is one line."""
CODE_STOP = "\n\n\n"
"""A trained ``code`` completion ends here (code tasks list it among their stop sequences)."""


@dataclass(frozen=True)
class PriorAttempt:
    """What a retry is told about an earlier attempt. ``answer`` is None when it must stay hidden
    (the distill teacher never sees the student's own failed answer)."""

    feedback: str
    answer: str | None = None


def render_prompt(question: str, *, memory: str = "", prior: Sequence[PriorAttempt] = ()) -> str:
    """Render a task as the model sees it.

    ``memory`` is already-rendered procedural memory (``procmem.memory`` renders it); empty means a
    memory-free prompt, which is the student's format at inference.
    """
    parts: list[str] = []
    if memory.strip():
        parts.append(memory.strip() + "\n\n")
    parts.append(f"Question: {question.strip()}\n")
    for attempt in prior:
        if attempt.answer is not None and "\n" in attempt.answer.strip():  # a program keeps its lines
            parts.append(f"Previous answer:\n{attempt.answer.strip()}\n")
        elif attempt.answer is not None:
            parts.append(f"Previous answer: {_one_line(attempt.answer)}\n")
        parts.append(f"Feedback: {_one_line(attempt.feedback)}\n")
    parts.append("Answer:")
    return "".join(parts)


def render_completion(answer: str, answer_format: AnswerFormat = "line") -> str:
    """The completion a model is trained to produce after :func:`render_prompt`, stop sequence included."""
    if answer_format == "code":
        return f" {answer.strip()}{CODE_STOP}"
    return f" {_one_line(answer)}{ANSWER_STOP}"


def extract_answer(completion: str, answer_format: AnswerFormat = "line") -> str:
    """The answer in a generated completion: its first line, or for ``code`` all of it, stripped."""
    if answer_format == "code":
        return completion.strip()
    return completion.strip().split(ANSWER_STOP, 1)[0].strip()


def _one_line(text: str) -> str:
    return " ".join(text.split())
