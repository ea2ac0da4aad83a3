"""The retrieval seam the agent calls, and THE one rendering of memory into a prompt.

The agent asks a :class:`Retriever` for ``retrieve(task, k)`` and passes ``Retrieval.text`` as the
``memory`` argument of :func:`procmem.core.render_prompt` (which puts it before ``Question: ...``);
``Retrieval.entry_ids`` go into ``Episode.memory_ids``. distill/ renders teacher prompts with
:func:`render_memory` too, so training and inference see the same memory text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from procmem.memory.experiences import ExperienceMemory

from procmem.core import Episode, Task, render_completion, render_prompt

__all__ = [
    "DEFAULT_MAX_CHARS",
    "ExperienceRetriever",
    "NoMemory",
    "Retrieval",
    "Retriever",
    "WorkedExample",
    "fit_memory",
    "render_memory",
]

DEFAULT_MAX_CHARS = 2000
"""Default budget of the rendered memory block, in characters (~500 tokens)."""


@dataclass(frozen=True)
class Retrieval:
    """What a retriever found: the ids of the memory entries used, and their rendered text ("" if none)."""

    entry_ids: tuple[str, ...] = ()
    text: str = ""


@runtime_checkable
class Retriever(Protocol):
    """Finds procedural memory for a task, already rendered for the prompt."""

    def retrieve(self, task: Task, k: int) -> Retrieval: ...


@dataclass(frozen=True)
class WorkedExample:
    """A question with its verified answer; ``id`` is the memory entry it came from."""

    id: str
    question: str
    answer: str

    @classmethod
    def from_episode(cls, episode: Episode) -> WorkedExample:
        """The episode's task and its final, passing answer."""
        if not episode.passed:
            raise ValueError(f"episode {episode.id} did not pass; only verified answers are worked examples")
        return cls(id=episode.id, question=episode.task.prompt, answer=episode.attempts[-1].answer)

    def render(self) -> str:
        """Exactly the text of the task's own prompt followed by the completion a model is trained on."""
        return render_prompt(self.question) + render_completion(self.answer)


def fit_memory(
    examples: Sequence[WorkedExample], *, max_entries: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> list[WorkedExample]:
    """The examples that fit the budget, taken in the given (most relevant first) order.

    An example that would overflow ``max_chars`` is skipped and a shorter, less relevant one may take
    its place; ``max_entries`` caps the count.
    """
    chosen: list[WorkedExample] = []
    for example in examples:
        if max_entries is not None and len(chosen) >= max_entries:
            break
        if len(_join([*chosen, example])) <= max_chars:
            chosen.append(example)
    return chosen


def render_memory(
    examples: Sequence[WorkedExample], *, max_entries: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """Render worked examples (most relevant first) as the memory block of a prompt.

    Each example is a ``Question: ...\\nAnswer: ...`` block, blocks are separated by a blank line, and the
    most relevant example comes last, right before the task's own question. Deterministic: the same
    examples give the same text. Returns "" when nothing fits.
    """
    return _join(fit_memory(examples, max_entries=max_entries, max_chars=max_chars))


def _join(examples: Sequence[WorkedExample]) -> str:
    return "\n".join(example.render() for example in reversed(examples)).strip()


class ExperienceRetriever:
    """Retrieves the ``k`` most similar verified train-split successes as worked examples
    (rules: :mod:`procmem.memory.experiences`)."""

    def __init__(self, memory: ExperienceMemory, *, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.memory = memory
        self.max_chars = max_chars

    def retrieve(self, task: Task, k: int) -> Retrieval:
        if k <= 0:
            return Retrieval()
        examples = [WorkedExample.from_episode(e) for e in self.memory.similar_successes(task, k)]
        fitted = fit_memory(examples, max_entries=k, max_chars=self.max_chars)
        return Retrieval(entry_ids=tuple(e.id for e in fitted), text=render_memory(fitted, max_chars=self.max_chars))


class NoMemory:
    """The retriever for ``--no-memory``: never finds anything."""

    def retrieve(self, task: Task, k: int) -> Retrieval:
        return Retrieval()
