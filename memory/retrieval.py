"""The retrieval seam the agent calls, and THE one rendering of memory into a prompt.

The agent asks a :class:`Retriever` for ``retrieve(task, k)`` and passes ``Retrieval.text`` as the
``memory`` argument of :func:`procmem.core.render_prompt` (which puts it before ``Question: ...``);
``Retrieval.entry_ids`` go into ``Episode.memory_ids``. distill/ renders teacher prompts with
:func:`render_memory` too, so training and inference see the same memory text.

A rendered memory block looks like this (sections that are empty are left out)::

    Advice from past problems:
    Pattern: <a behaviour that recurs across problems>
    Strategy: <what led to a pass on a similar problem>
    Lesson: <a mistake on a similar problem> → <how to avoid it>

    Question: <a similar solved problem>
    Answer: <its verified answer>

    Question: <the most similar solved problem, last>
    Answer: <its verified answer>
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from procmem.core import Episode, Task, render_completion, render_prompt
from procmem.memory.entries import Entry, Kind
from procmem.memory.experiences import ExperienceMemory

__all__ = [
    "ADVICE_HEADER",
    "DEFAULT_MAX_CHARS",
    "Advice",
    "ExperienceRetriever",
    "MemoryContext",
    "NoMemory",
    "Retrieval",
    "Retriever",
    "WorkedExample",
    "fit_context",
    "fit_memory",
    "render_memory",
]

ADVICE_HEADER = "Advice from past problems:"
_LABEL: dict[Kind, str] = {"strategy": "Strategy", "lesson": "Lesson", "pattern": "Pattern"}

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


@dataclass(frozen=True)
class Advice:
    """An insight or a pattern as a prompt shows it; ``id`` is its memory entry."""

    id: str
    kind: Kind
    text: str

    @classmethod
    def from_entry(cls, entry: Entry) -> Advice:
        return cls(id=entry.id, kind=entry.kind, text=entry.text)

    def render(self) -> str:
        return f"{_LABEL[self.kind]}: {' '.join(self.text.split())}"


@dataclass(frozen=True)
class MemoryContext:
    """What memory holds for one task, each section most relevant first."""

    examples: tuple[WorkedExample, ...] = ()
    insights: tuple[Advice, ...] = ()
    patterns: tuple[Advice, ...] = ()

    @property
    def entry_ids(self) -> tuple[str, ...]:
        """Every entry used: patterns, insights, then worked examples, each most relevant first."""
        return (*(a.id for a in self.patterns), *(a.id for a in self.insights), *(e.id for e in self.examples))

    def __len__(self) -> int:
        return len(self.examples) + len(self.insights) + len(self.patterns)


def fit_context(context: MemoryContext, *, max_entries: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
                ) -> MemoryContext:
    """The part of ``context`` that fits the budget.

    Candidates are taken by rank, round robin across sections (example 1, insight 1, pattern 1,
    example 2, ...); one that would overflow ``max_chars`` is skipped and a later, smaller one may take
    its place; ``max_entries`` caps the total. Advice whose text is already chosen (a pattern extracted
    from one merged insight says what the insight says) is skipped. Deterministic.
    """
    chosen = MemoryContext()
    sections = ("examples", "insights", "patterns")
    for rank in range(max(len(context.examples), len(context.insights), len(context.patterns))):
        for name in sections:
            queue: tuple[WorkedExample | Advice, ...] = getattr(context, name)
            if rank >= len(queue) or (max_entries is not None and len(chosen) >= max_entries):
                continue
            candidate = queue[rank]
            if isinstance(candidate, Advice) and _said(candidate, (*chosen.insights, *chosen.patterns)):
                continue
            trial = replace(chosen, **{name: (*getattr(chosen, name), candidate)})
            if len(_render(trial)) <= max_chars:
                chosen = trial
    return chosen


def _said(advice: Advice, chosen: Sequence[Advice]) -> bool:
    words = " ".join(advice.text.lower().split())
    return any(" ".join(other.text.lower().split()) == words for other in chosen)


def fit_memory(
    examples: Sequence[WorkedExample], *, max_entries: int | None = None, max_chars: int = DEFAULT_MAX_CHARS
) -> list[WorkedExample]:
    """The worked examples that fit the budget, taken in the given (most relevant first) order
    (:func:`fit_context` with examples only)."""
    return list(fit_context(MemoryContext(examples=tuple(examples)), max_entries=max_entries,
                            max_chars=max_chars).examples)


def render_memory(
    memory: MemoryContext | Sequence[WorkedExample], *, max_entries: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> str:
    """Render procedural memory (most relevant first in each section) as the memory block of a prompt.

    The block holds the advice (patterns, then insights) under :data:`ADVICE_HEADER`, then the worked
    examples as ``Question: ...\nAnswer: ...`` blocks, the most relevant last, right before the task's
    own question. Blocks are separated by a blank line. Only what fits the budget is rendered
    (:func:`fit_context`). Deterministic: the same memory gives the same text. Returns "" when nothing fits.
    """
    context = memory if isinstance(memory, MemoryContext) else MemoryContext(examples=tuple(memory))
    return _render(fit_context(context, max_entries=max_entries, max_chars=max_chars))


def _render(context: MemoryContext) -> str:
    blocks: list[str] = []
    advice = [a.render() for a in (*context.patterns, *context.insights)]
    if advice:
        blocks.append("\n".join([ADVICE_HEADER, *advice]) + "\n")
    blocks += [example.render() for example in reversed(context.examples)]
    return "\n".join(blocks).strip()


class ExperienceRetriever:
    """Retrieves the ``k`` most similar verified train-split successes as worked examples
    (rules: :mod:`procmem.memory.experiences`)."""

    def __init__(self, memory: ExperienceMemory, *, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.memory = memory
        self.max_chars = max_chars

    def retrieve(self, task: Task, k: int) -> Retrieval:
        if k <= 0:
            return Retrieval()
        examples = tuple(WorkedExample.from_episode(e) for e in self.memory.similar_successes(task, k))
        fitted = fit_context(MemoryContext(examples=examples), max_entries=k, max_chars=self.max_chars)
        return Retrieval(entry_ids=fitted.entry_ids, text=render_memory(fitted, max_chars=self.max_chars))


class NoMemory:
    """The retriever for ``--no-memory``: never finds anything."""

    def retrieve(self, task: Task, k: int) -> Retrieval:
        return Retrieval()
