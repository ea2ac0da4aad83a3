"""Level 1 of procedural memory: every recorded episode, and retrieval of verified past successes.

Rules for what may become a worked example (enforced by :meth:`ExperienceMemory.similar_successes`):

1. **Only verified successes**: the episode's final attempt passed its verifier. Failed episodes are
   recorded (distill/ learns from them) but never shown as examples.
2. **Only the train split.** Episodes of test-split tasks are recorded for evaluation but never reach
   any prompt; otherwise a held-out answer could leak into another task's prompt, or into a train
   prompt that distillation then bakes into the adapter.
3. **Never the task itself.** Episodes of the same task id, or of a task with the same question
   (:func:`~procmem.core.keys.normalize_question`: case, whitespace and punctuation spacing), are
   skipped: the model must not copy a past answer to the very same problem
   (easy task suites repeat questions under new ids).
4. **One example per task**, nearest first: repeated solves of one task do not crowd out the others.

On a :class:`~procmem.memory.base.VectorMemoryStore` the examples come from one search of the
:data:`~procmem.memory.base.EXAMPLES` index (verified train successes, one per problem), however many times each
problem was solved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy.typing as npt

from procmem.core import Episode, Task
from procmem.core.keys import normalize_question, problem_key
from procmem.memory.base import EXAMPLES, LEVELS, Level, MemoryRecord, MemoryStore, Scalar, VectorMemoryStore
from procmem.memory.embedding import embed_array

__all__ = ["EXAMPLE_FILTER", "EXPERIENCE", "ExperienceMemory", "pick_examples"]

EXPERIENCE: Level = "experience"
EXAMPLE_FILTER: dict[str, Scalar] = dict(EXAMPLES.where)
"""The metadata a worked example matches (rules 1 and 2; :func:`pick_examples` checks the payload too)."""
_SPARE = 2
"""Problems fetched beyond ``k``: the task's own, and one more in case another problem was posed under its id."""


class ExperienceMemory:
    """Episodes stored at the ``experience`` level of a :class:`MemoryStore`.

    Each episode is one record: text = the task prompt (what similarity search compares), metadata =
    task_id, problem (:func:`~procmem.core.keys.problem_key`), suite, split, passed, model_id,
    adapter_version ("" for none), attempts, created_at, payload = ``episode.to_dict()``.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def record(self, episode: Episode) -> None:
        """Store one finished episode (recording it again overwrites it)."""
        self.store.upsert([_to_record(episode)])

    def record_many(self, episodes: Sequence[Episode]) -> None:
        """Store many episodes in one batch (one embedding call)."""
        self.store.upsert([_to_record(e) for e in episodes])

    def get(self, episode_id: str) -> Episode | None:
        found = self.store.get(EXPERIENCE, [episode_id])
        return Episode.from_dict(found[0].payload) if found else None

    def episodes(
        self,
        *,
        suite: str | None = None,
        split: str | None = None,
        passed: bool | None = None,
        task_id: str | None = None,
    ) -> list[Episode]:
        """Stored episodes matching every given filter, oldest first."""
        where = {key: value for key, value in
                 (("suite", suite), ("split", split), ("passed", passed), ("task_id", task_id))
                 if value is not None}
        found = [Episode.from_dict(r.payload) for r in self.store.scan(EXPERIENCE, where=where)]
        return sorted(found, key=lambda e: (e.finished_at, e.id))

    def similar_successes(self, task: Task, k: int, *, vector: npt.ArrayLike | None = None) -> list[Episode]:
        """Up to ``k`` verified train-split successes on other tasks, most similar to ``task`` first.

        On a :class:`~procmem.memory.base.VectorMemoryStore`: one search of the
        :data:`~procmem.memory.base.EXAMPLES` index (one success per problem), for ``k`` plus a few (the task's own
        problem, and another problem under the task's id, are left out). ``vector`` is the task prompt's embedding
        when the caller has it already. A plain :class:`MemoryStore` is searched by text, wider each time until ``k``
        are found."""
        if k <= 0:
            return []
        if isinstance(self.store, VectorMemoryStore):
            query = embed_array(self.store.embedder, [task.prompt])[0] if vector is None else vector
            hits = self.store.query_distinct(EXAMPLES, query, k=k + _SPARE)
            return pick_examples([h.record for h in hits], task, k)
        fetch = 2 * k + 4
        while True:
            hits = self.store.query(EXPERIENCE, task.prompt, k=fetch, where=EXAMPLE_FILTER)
            chosen = pick_examples([h.record for h in hits], task, k)
            if len(chosen) >= k or len(hits) < fetch:
                return chosen
            fetch *= 4  # many hits were the task itself or repeats: look further

    def stats(self) -> dict[Level, int]:
        """How many entries each memory level holds (every level, zeros included)."""
        return {level: self.store.count(level) for level in LEVELS}

    def close(self) -> None:
        """Release the store, if it holds resources."""
        close = getattr(self.store, "close", None)
        if callable(close):
            close()


def _to_record(episode: Episode) -> MemoryRecord:
    return MemoryRecord(
        id=episode.id,
        level=EXPERIENCE,
        text=episode.task.prompt,
        metadata={
            "task_id": episode.task.id,
            "problem": problem_key(episode.task.prompt),
            "suite": episode.task.suite,
            "split": episode.task.split,
            "passed": episode.passed,
            "model_id": episode.model_id,
            "adapter_version": episode.adapter_version or "",
            "attempts": len(episode.attempts),
            "created_at": episode.finished_at,
        },
        payload=episode.to_dict(),
    )


def pick_examples(records: Sequence[MemoryRecord], task: Task, k: int) -> list[Episode]:
    """Up to ``k`` worked examples for ``task`` among ``records`` (most similar first): rules 1-4 of the module
    docstring applied in order."""
    seen_tasks = {task.id}
    seen_questions = {normalize_question(task.prompt)}
    chosen: list[Episode] = []
    for record in records:
        episode = Episode.from_dict(record.payload)
        question = normalize_question(episode.task.prompt)
        # The metadata filter already asked for these; the payload is the source of truth.
        if not episode.passed or episode.task.split != "train":
            continue
        if episode.task.id in seen_tasks or question in seen_questions:
            continue
        seen_tasks.add(episode.task.id)
        seen_questions.add(question)
        chosen.append(episode)
        if len(chosen) == k:
            break
    return chosen
