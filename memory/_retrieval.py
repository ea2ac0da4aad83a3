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

The retrievers: :class:`ProceduralRetriever` (all three levels, scored by similarity times
:func:`~procmem.memory._hygiene.trust`; entries scoped to the task's suite, such as operator playbooks, at full
similarity; for the distillation teacher, only advice the verifier validated in use,
:func:`~procmem.memory._hygiene.teacher_validated`), :class:`ExperienceRetriever` (worked examples only) and
:class:`NoMemory`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from procmem.core import Episode, Task, render_completion, render_prompt
from procmem.core.keys import problem_key
from procmem.memory._entries import (
    INSIGHT,
    PATTERN,
    Entry,
    EntryLevel,
    Kind,
    entry_or_none,
    problem_flag,
    scope_matches,
    suite_family,
)
from procmem.memory._experiences import EXPERIENCE, ExperienceMemory
from procmem.memory._hygiene import teacher_validated, trust
from procmem.memory.base import PROBLEMS, Scalar, ScoredRecord, VectorMemoryStore, VectorStoreBase
from procmem.memory.config import MemoryConfig
from procmem.memory.embedding import embed_array

__all__ = [
    "ADVICE_HEADER",
    "DEFAULT_MAX_CHARS",
    "Advice",
    "ExperienceRetriever",
    "MemoryContext",
    "NoMemory",
    "ProceduralRetriever",
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
    (rules: :mod:`procmem.memory._experiences`)."""

    def __init__(self, memory: ExperienceMemory, *, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.memory = memory
        self.max_chars = max_chars

    def retrieve(self, task: Task, k: int) -> Retrieval:
        if k <= 0:
            return Retrieval()
        examples = tuple(WorkedExample.from_episode(e) for e in self.memory.similar_successes(task, k))
        return _retrieval(MemoryContext(examples=examples), max_entries=k, max_chars=self.max_chars)


class ProceduralRetriever:
    """The agent's retriever over all three levels: insights of the nearest problems, patterns, and up to
    ``k`` worked examples, fitted to the character budget and rendered by the one :func:`render_memory`.

    ``policy`` (``policy_version(llm)``) is the version now solving, whose validated entries are trusted
    fully (co-evolution). Only train-split entries, only active ones; a test-split task never sees anything
    from its own problem. ``teacher``: the distillation teacher's view, whose advice is only what the verifier
    validated in use (``config.teacher``, :func:`~procmem.memory._hygiene.teacher_validated`); its worked
    examples are the same.
    """

    def __init__(self, store: VectorMemoryStore, config: MemoryConfig | None = None, *, policy: str | None = None,
                 max_chars: int | None = None, teacher: bool = False) -> None:
        self.store = store
        self.config = config or MemoryConfig()
        self.policy = policy
        self.max_chars = self.config.retrieval.max_chars if max_chars is None else max_chars
        self.teacher = teacher
        self._pass_rates: dict[str, float] = {}

    def retrieve(self, task: Task, k: int) -> Retrieval:
        if k <= 0:
            return Retrieval()
        return _retrieval(self.context(task, k), max_entries=None, max_chars=self.max_chars)

    def context(self, task: Task, k: int) -> MemoryContext:
        """Everything memory holds for ``task`` (before the budget): up to ``k`` worked examples, insights
        of the nearest solved problems, and patterns, each section best first.

        The task is embedded once. The nearest problems come from one search of the
        :data:`~procmem.memory.base.PROBLEMS` index and the worked examples from one search of the
        :data:`~procmem.memory.base.EXAMPLES` index (each holds one episode per problem, so however often a problem
        was solved one search finds enough); insights are read per nearest problem, patterns by one search, and
        entries scoped to the task's suite by a filtered read. A fixed number of store calls, none of which reads a
        whole level or widens, so the cost does not grow with the number of episodes (beyond the indexes'); a store
        that groups reads (:meth:`~procmem.memory.base.VectorStoreBase.reading`) takes its lock once for all."""
        cfg = self.config.retrieval
        vector = embed_array(self.store.embedder, [task.prompt])[0]
        with self.store.reading() if isinstance(self.store, VectorStoreBase) else contextlib.nullcontext():
            nearest = self.store.query_distinct(PROBLEMS, vector, k=cfg.nearest_problems + 1)  # + the task's own
            successes = ExperienceMemory(self.store).similar_successes(task, k, vector=vector)
            examples = tuple(WorkedExample.from_episode(e) for e in successes)
            return MemoryContext(examples, self._insights(task, nearest), self._patterns(task, vector))

    def _insights(self, task: Task, nearest: Sequence[ScoredRecord]) -> tuple[Advice, ...]:
        """Insights of the nearest problems among ``nearest`` (train-split episodes, one per problem, most similar
        first).

        A verifier lesson about one problem ("the answer '46' was wrong 2 times here") reaches that problem
        only; what such lessons share across problems is their suite family's pattern."""
        cfg = self.config.retrieval
        if cfg.insights <= 0:
            return ()
        own = problem_key(task.prompt)
        near: dict[str, float] = {}
        for hit in nearest:
            key = str(hit.record.metadata.get("problem") or problem_key(hit.record.text))
            if hit.similarity < cfg.min_problem_similarity or len(near) >= cfg.nearest_problems:
                break
            if not (task.split == "test" and key == own):
                near.setdefault(key, hit.similarity)
        scored: list[tuple[float, Entry]] = []
        for key, similarity in near.items():
            where: dict[str, Scalar] = {problem_flag(key): True, "status": "active", "split": "train"}
            for record in self.store.scan(INSIGHT, where=where):
                entry = entry_or_none(record)
                if entry is None or (task.split == "test" and own in entry.problem_ids):
                    continue  # merged across the task's own problem: reflected on its own attempts
                if entry.source == "verifier" and own not in entry.problem_ids:
                    continue  # quotes its own problem's rejected answers: noise, even a prompt, elsewhere
                if not self._admits(entry):
                    continue
                scored.append((similarity * trust(entry, self.policy, self.config.hygiene), entry))
        scored += self._scoped(INSIGHT, task)
        return _top_advice(scored, cfg.insights)

    def _patterns(self, task: Task, vector: npt.NDArray[np.float32]) -> tuple[Advice, ...]:
        cfg = self.config.retrieval
        if cfg.patterns <= 0:
            return ()
        where: dict[str, Scalar] = {"status": "active", "split": "train"}
        hits = self.store.query_vector(PATTERN, vector, k=4 * cfg.patterns, where=where)
        scored = [(h.similarity * trust(e, self.policy, self.config.hygiene), e) for h in hits
                  if h.similarity >= cfg.min_pattern_similarity and (e := entry_or_none(h.record)) is not None
                  and not e.scope and self._admits(e)]  # a scoped pattern reaches only its scope's tasks, below
        return _top_advice([*scored, *self._scoped(PATTERN, task)], cfg.patterns)

    def _scoped(self, level: EntryLevel, task: Task) -> list[tuple[float, Entry]]:
        """Active train entries scoped to ``task``'s suite or its family (operator playbooks, suite-wide
        verifier lessons), each at full similarity times its trust: they rank above similar-problem advice."""
        found: list[tuple[float, Entry]] = []
        for scope in dict.fromkeys((task.suite.strip(), suite_family(task.suite))):
            for record in self.store.scan(level, where={"scope": scope, "status": "active", "split": "train"}):
                entry = entry_or_none(record)
                if entry is not None and scope_matches(entry.scope, task.suite) and self._admits(entry):
                    found.append((trust(entry, self.policy, self.config.hygiene), entry))
        return found

    def _admits(self, entry: Entry) -> bool:
        """Every active entry reaches the agent; the teacher reads advice the verifier validated in use."""
        if not self.teacher:
            return True
        return teacher_validated(entry, self._baseline(entry.suite), self.config.teacher)

    def _baseline(self, suite: str) -> float:
        """The pass rate advice of ``suite`` must beat: the higher of its suite's train episodes' and all train
        episodes' (advice found by similarity also reaches other suites). Read once per retriever."""
        return max(self._pass_rate(suite), self._pass_rate(""))

    def _pass_rate(self, suite: str) -> float:
        if suite not in self._pass_rates:
            where: dict[str, Scalar] = {"split": "train", **({"suite": suite} if suite else {})}
            total = self.store.count(EXPERIENCE, where=where)
            passed = self.store.count(EXPERIENCE, where={**where, "passed": True}) if total else 0
            self._pass_rates[suite] = passed / total if total else 0.0
        return self._pass_rates[suite]


class NoMemory:
    """The retriever for ``--no-memory``: never finds anything."""

    def retrieve(self, task: Task, k: int) -> Retrieval:
        return Retrieval()


def _retrieval(context: MemoryContext, *, max_entries: int | None, max_chars: int) -> Retrieval:
    """What a retriever returns for ``context``: the part that fits the budget, rendered."""
    fitted = fit_context(context, max_entries=max_entries, max_chars=max_chars)
    return Retrieval(entry_ids=fitted.entry_ids, text=render_memory(fitted, max_chars=max_chars))


def _top_advice(scored: Iterable[tuple[float, Entry]], n: int) -> tuple[Advice, ...]:
    """The ``n`` best-scored entries as advice, each entry once (at its best score); the id breaks ties."""
    best: dict[str, tuple[float, Entry]] = {}
    for score, entry in scored:
        if entry.id not in best or score > best[entry.id][0]:
            best[entry.id] = (score, entry)
    ranked = sorted(best.values(), key=lambda pair: (-pair[0], pair[1].id))
    return tuple(Advice.from_entry(entry) for _, entry in ranked[:n])
