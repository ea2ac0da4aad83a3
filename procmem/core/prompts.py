"""The one prompt format. The agent, the distill teacher and the student all render through here,
so training and inference see exactly the same text.

The bundled model is a base model without a chat template, so prompts are plain text that ends in
``Answer:``. A ``line`` answer is the completion's first line; a ``code`` answer (a program, see
``Task.answer_format``) is the whole completion, which the task's stop sequences end.

A ``reasoned`` task leaves room to work the problem out: its prompt ends after the question (no
``Answer:`` cue), the completion may take several lines, and the answer is the rest of the first line that
starts with :data:`ANSWER_MARK` (``Answer:``). Without such a line there is no answer. A one-line worked
example (``Question: ...\nAnswer: 42``) is therefore also a valid reasoned completion with no working.
:data:`REASONED_STOP` ends a reasoned completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from procmem.core.types import AnswerFormat

__all__ = ["ANSWER_MARK", "ANSWER_STOP", "CODE_STOP", "REASONED_STOP", "PriorAttempt", "extract_answer",
           "render_completion", "render_prompt"]

ANSWER_STOP = "\n"
"""Generation stops here: a ``line`` answer is one line."""
CODE_STOP = "\n\n\n"
"""A trained ``code`` completion ends here (code tasks list it among their stop sequences)."""
ANSWER_MARK = "Answer:"
"""The label of the answer line (the prompt's last word for ``line`` and ``code`` tasks)."""
REASONED_STOP = ("\n\n", "\nQuestion:")
"""A ``reasoned`` completion ends at a blank line or where the model starts another question."""
_MARKED = re.compile(r"^\s*" + re.escape(ANSWER_MARK) + r"[ \t]*(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class PriorAttempt:
    """What a retry is told about an earlier attempt. ``answer`` is None when it must stay hidden
    (the distill teacher never sees the student's own failed answer)."""

    feedback: str
    answer: str | None = None


def render_prompt(question: str, *, memory: str = "", prior: Sequence[PriorAttempt] = (),
                  answer_format: AnswerFormat = "line") -> str:
    """Render a task as the model sees it.

    ``memory`` is already-rendered procedural memory (``procmem.memory`` renders it); empty means a
    memory-free prompt, which is the student's format at inference. A ``reasoned`` prompt puts prior
    attempts before the question and stops after it, as a worked example would (``Question: ...`` then the
    completion), so the completion can work before its ``Answer:`` line.
    """
    parts: list[str] = []
    if memory.strip():
        parts.append(memory.strip() + "\n\n")
    history: list[str] = []
    for attempt in prior:
        if attempt.answer is not None and "\n" in attempt.answer.strip():  # a program keeps its lines
            history.append(f"Previous answer:\n{attempt.answer.strip()}\n")
        elif attempt.answer is not None:
            history.append(f"Previous answer: {_one_line(attempt.answer)}\n")
        history.append(f"Feedback: {_one_line(attempt.feedback)}\n")
    question_line = f"Question: {question.strip()}\n"
    if answer_format == "reasoned":
        # the question comes last, as in every worked example, so the model goes on to its Answer: line
        return "".join([*parts, *history, "\n" if history else "", question_line])
    return "".join([*parts, question_line, *history, ANSWER_MARK])


def render_completion(answer: str, answer_format: AnswerFormat = "line") -> str:
    """The completion a model is trained to produce after :func:`render_prompt`, stop sequence included."""
    if answer_format == "code":
        return f" {answer.strip()}{CODE_STOP}"
    if answer_format == "reasoned":
        return f"{ANSWER_MARK} {_one_line(answer)}{REASONED_STOP[0]}"
    return f" {_one_line(answer)}{ANSWER_STOP}"


def extract_answer(completion: str, answer_format: AnswerFormat = "line") -> str:
    """The answer in a generated completion: its first line, for ``code`` all of it, for ``reasoned`` the rest
    of the first line marked ``Answer:`` (see :func:`_marked_answer`)."""
    if answer_format == "code":
        return completion.strip()
    if answer_format == "reasoned":
        return _marked_answer(completion)
    return completion.strip().split(ANSWER_STOP, 1)[0].strip()


def _marked_answer(completion: str) -> str:
    """The answer on the first line marked ``Answer:``: empty when no line is marked; the next non-empty line
    when the marked line is empty; the right-hand side of an equation (``Answer: 4 * 3 = 12`` is ``12``);
    stripped, without a sentence's closing period (``Answer: 12.`` is ``12``)."""
    found = _MARKED.search(completion)
    if found is None:
        return ""
    answer = found.group(1).strip()
    if not answer:
        rest = [line.strip() for line in completion[found.end():].splitlines() if line.strip()]
        answer = rest[0] if rest else ""
    if "=" in answer:
        answer = answer.rsplit("=", 1)[1].strip()
    return answer[:-1].rstrip() if answer.endswith(".") and not answer.endswith("..") else answer


def _one_line(text: str) -> str:
    return " ".join(text.split())
