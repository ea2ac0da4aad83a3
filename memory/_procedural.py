"""Procedural memory, all three levels: experiences → insights → patterns, with hygiene and co-evolution.

What the agent and the CLI call (see README "Procedural memory")::

    memory = open_memory(home.chroma)                        # a ProceduralMemory
    retriever = memory.retriever(policy=policy_version(llm)) # insights + patterns + worked examples
    teacher = memory.teacher_retriever(policy=...)           # the same, advice only once the verifier validated it
    recorder = memory.recorder(reflector=llm)                # after each episode: record, count, reflect
    memory.reflect(llm, since=..., max_calls=N)              # batch: (re)build insights, consolidate patterns
    memory.prune(policy=...)                                 # retire and evict by the hygiene rules

:class:`ProceduralMemory` is the facade: retrieval lives in :mod:`._retrieval`, reflection and consolidation
in :mod:`._learning`, hygiene in :mod:`._hygiene`, export and import in :mod:`._transfer`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from procmem.core import Episode, Task, utc_now
from procmem.core.llm import LLM
from procmem.memory import _hygiene as hygiene
from procmem.memory import _learning as learning
from procmem.memory import _transfer as transfer
from procmem.memory._entries import ENTRY_LEVELS, Entry, EntryLevel, Kind, entry_id, entry_or_none
from procmem.memory._experiences import EXPERIENCE, ExperienceMemory
from procmem.memory._hygiene import PruneReport
from procmem.memory._learning import Progress, ReflectionReport
from procmem.memory._retrieval import MemoryContext, ProceduralRetriever
from procmem.memory.base import LEVELS, Level, MemoryRecord, VectorMemoryStore
from procmem.memory.config import MemoryConfig

__all__ = ["AfterEpisode", "ProceduralMemory"]


@dataclass(frozen=True)
class AfterEpisode:
    """What :meth:`ProceduralMemory.after_episode` did."""

    recorded: bool
    """False when this episode id was already stored (a resumed run): its counters were not counted again."""
    counted: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    reflection: ReflectionReport | None = None


class ProceduralMemory(ExperienceMemory):
    """The three memory levels on one :class:`~procmem.memory.base.VectorMemoryStore`.

    It is an :class:`ExperienceMemory` (``record``, ``episodes``, ``similar_successes``, ``stats``) plus
    insights and patterns. Thread-safe as far as its store is.
    """

    store: VectorMemoryStore

    def __init__(self, store: VectorMemoryStore, config: MemoryConfig | None = None) -> None:
        super().__init__(store)
        self.config = config or MemoryConfig()

    # --- the agent's hooks -----------------------------------------------------------------------

    def retriever(self, *, policy: str | None = None, max_chars: int | None = None) -> ProceduralRetriever:
        """The agent's :class:`~procmem.memory.Retriever`; ``policy`` (``policy_version(llm)``) is
        the version now solving, whose validated entries are trusted fully (co-evolution)."""
        return ProceduralRetriever(self.store, self.config, policy=policy, max_chars=max_chars)

    def teacher_retriever(self, *, policy: str | None = None, max_chars: int | None = None) -> ProceduralRetriever:
        """The distillation teacher's retriever: the agent's worked examples, and only the advice the verifier
        validated in use (``config.teacher``; :func:`~procmem.memory._hygiene.teacher_validated`)."""
        return ProceduralRetriever(self.store, self.config, policy=policy, max_chars=max_chars, teacher=True)

    def recorder(self, *, reflector: LLM | None = None,
                 cost: ReflectionReport | None = None) -> Callable[[Episode], None]:
        """The agent's ``recorder``: :meth:`after_episode` with inline reflection by ``reflector``; what the
        reflections did and cost is summed into ``cost`` (the agent records from several threads)."""
        lock = threading.Lock()

        def record(episode: Episode) -> None:
            done = self.after_episode(episode, reflector=reflector)
            if cost is not None and done.reflection is not None:
                with lock:
                    cost.add(done.reflection)

        return record

    def after_episode(self, episode: Episode, *, reflector: LLM | None = None) -> AfterEpisode:
        """Everything that follows a finished episode, idempotently:

        1. record it (level 1);
        2. if it used memory (``episode.memory_ids``) and is new: helpful += 1 on a pass, harmful += 1 on a
           failure, uses += 1, for every insight and pattern it used; retire what the rules say;
        3. with a ``reflector`` (and ``reflection.inline``), reflect on its problem if that problem has a
           new episode since its last reflection (one LLM call);
        4. keep the experience level under its cap.
        """
        stored = self.store.get(EXPERIENCE, [episode.id])
        new = not stored
        if new or Episode.from_dict(stored[0].payload) != episode:
            self.record(episode)  # an unchanged re-record is skipped: it would drop the reflection mark
        counted: tuple[str, ...] = ()
        retired: tuple[str, ...] = ()
        if new and episode.memory_ids and episode.attempts:
            counted, retired = hygiene.count_use(self.store, episode, self.config.hygiene)
        report = None
        if reflector is not None and self.config.reflection.inline:
            report = learning.reflect_on_episode(self.store, self.config, reflector, episode)
        hygiene.enforce_cap(self.store, EXPERIENCE, self.config.hygiene, policy=None)
        return AfterEpisode(recorded=new, counted=counted, retired=retired, reflection=report)

    # --- retrieval -------------------------------------------------------------------------------

    def context_for(self, task: Task, k: int, *, policy: str | None = None) -> MemoryContext:
        """Everything memory holds for ``task`` (before the budget): up to ``k`` worked examples, insights
        of the nearest solved problems, and patterns. Only train-split entries, only active ones; a
        test-split task never sees anything from its own problem."""
        return self.retriever(policy=policy).context(task, k)

    # --- reflection ------------------------------------------------------------------------------

    def reflect(self, llm: LLM, *, since: str | None = None, max_calls: int | None = None,
                policy: str | None = None, consolidate: bool = True, feedback: bool = True,
                progress: Progress | None = None) -> ReflectionReport:
        """The batch job: reflect on every judged problem with an episode finished at or after ``since``
        (ISO time; all when None) that was not reflected on by this reflector since its last new episode,
        then consolidate patterns and enforce the size caps. At most ``max_calls`` LLM calls in total.

        Idempotent: a second run with nothing new makes no call and changes nothing. ``policy`` is the
        policy version the insights are validated for (default: the reflector's own, i.e. self-reflection).
        ``feedback`` also writes the verifier-grounded lessons (:mod:`~procmem.memory._feedback_lessons`).
        """
        return learning.reflect(self.store, self.config, llm, self.episodes(), since=since, max_calls=max_calls,
                                policy=policy, consolidate_patterns=consolidate, feedback=feedback,
                                progress=progress)

    def consolidate(self, llm: LLM | None = None, *, max_calls: int | None = None) -> ReflectionReport:
        """Only the pattern step of :meth:`reflect`; without ``llm`` every pattern is extractive."""
        return learning.consolidate(self.store, self.config, llm, max_calls=max_calls)

    # --- hygiene ---------------------------------------------------------------------------------

    def write_entry(self, entry: Entry) -> Literal["added", "merged"]:
        """Write an insight or pattern, deduplicated (:func:`~procmem.memory._hygiene.write_entry`)."""
        return hygiene.write_entry(self.store, entry, self.config.hygiene)

    def add_operator_entry(self, level: EntryLevel, text: str, *, scope: str, kind: Kind | None = None,
                           by: str = "operator") -> tuple[Entry, Literal["added", "merged"]]:
        """Write an operator's procedure (a playbook line) for every task of ``scope`` (a suite spec or family,
        see :func:`~procmem.memory._entries.scope_matches`): an insight (``kind`` strategy, the default, or
        lesson) or a pattern, ``source="operator"``, train split (it comes from no test problem, so retrieval
        gives it to train and test tasks of the scope alike). Deduplicated like every entry; ``by`` (who added
        it) is recorded in its ``changes``."""
        text, scope = " ".join(text.split()), scope.strip()
        if not text:
            raise ValueError("an operator entry needs text")
        if not scope:
            raise ValueError("an operator entry needs a scope (a suite spec such as rg:products)")
        kind = "pattern" if level == "pattern" else (kind or "strategy")
        now = utc_now()
        entry = Entry(id=entry_id(level, kind, "train", f"scope:{scope}", text), level=level, kind=kind, text=text,
                      suite=scope, split="train", policy_version="operator", reflector="operator",
                      method="operator", source="operator", scope=scope, created_at=now, updated_at=now,
                      changes=({"at": now, "by": by, "action": "add"},))
        return entry, self.write_entry(entry)

    def retire_entry(self, entry_id: str, *, by: str) -> Entry:
        """Retire an insight or pattern by hand: retrieval stops giving it; ``by`` and the time are recorded in
        its ``changes`` (``procmem memory show``). Raises KeyError when no entry has that id."""
        return self._curate(entry_id, by, "retire", status="retired")

    def restore_entry(self, entry_id: str, *, by: str) -> Entry:
        """Make a retired entry active again (its counters stay; the retirement rule may retire it again)."""
        return self._curate(entry_id, by, "restore", status="active")

    def edit_entry(self, entry_id: str, text: str, *, by: str) -> Entry:
        """Replace an entry's text (re-embedded; its id, provenance and counters stay); the text it replaced is
        kept in the change record."""
        text = " ".join(text.split())
        if not text:
            raise ValueError("an entry needs text")
        return self._curate(entry_id, by, "edit", text=text)

    def _curate(self, entry_id: str, by: str, action: str, **changes: Any) -> Entry:
        with self.store.exclusive():  # a counter update between the read and the write would be lost
            entry = self.entry(entry_id)
            if entry is None:
                raise KeyError(entry_id)
            now = utc_now()
            record: dict[str, str] = {"at": now, "by": by, "action": action}
            if "text" in changes and changes["text"] != entry.text:
                record["before"] = entry.text
            new = replace(entry, **changes, updated_at=now, changes=(*entry.changes, record))
            self.store.upsert([new.to_record()])
        return new

    def prune(self, *, policy: str | None = None, dry_run: bool = False) -> PruneReport:
        """Apply the retirement rule to every active entry (settings may have changed), then evict down
        to the size caps. ``policy`` makes stale entries go before validated ones at equal utility."""
        return hygiene.prune(self.store, self.config.hygiene, policy=policy, dry_run=dry_run)

    # --- reading ---------------------------------------------------------------------------------

    def entries(self, level: EntryLevel, *, status: str | None = None, kind: str | None = None) -> list[Entry]:
        """Insights or patterns (matching ``status``/``kind``), oldest first."""
        where = {k: v for k, v in (("status", status), ("kind", kind)) if v is not None}
        found = [e for r in self.store.scan(level, where=where) if (e := entry_or_none(r)) is not None]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    def entry(self, entry_id: str) -> Entry | None:
        for level in ENTRY_LEVELS:
            found = self.find(entry_id, level)
            if found is not None:
                return entry_or_none(found)
        return None

    def find(self, record_id: str, level: Level | None = None) -> MemoryRecord | None:
        """The record with this id at ``level`` (or at the first level that has it)."""
        for candidate in (level,) if level else LEVELS:
            found = self.store.get(candidate, [record_id])
            if found:
                return found[0]
        return None

    def search(self, text: str, *, level: Level, k: int = 5) -> list[tuple[float, MemoryRecord]]:
        return [(h.similarity, h.record) for h in self.store.query(level, text, k=k)]

    def status_counts(self) -> dict[str, Any]:
        """Entries per level, and active vs retired for insights and patterns (``stats --json``)."""
        counts: dict[str, Any] = {str(level): n for level, n in self.stats().items()}
        counts["active"] = {lvl: self.store.count(lvl, where={"status": "active"}) for lvl in ENTRY_LEVELS}
        counts["retired"] = {lvl: self.store.count(lvl, where={"status": "retired"}) for lvl in ENTRY_LEVELS}
        return counts

    # --- export / import -------------------------------------------------------------------------

    def export_jsonl(self, path: str | os.PathLike[str], *, levels: Sequence[Level] = LEVELS) -> int:
        """Write every record of ``levels`` as JSONL (level order, then id), atomically; returns the count."""
        return transfer.export_jsonl(self.store, path, levels=levels)

    def import_jsonl(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Read a file written by :meth:`export_jsonl` and upsert every record. Every line is checked first:
        one bad line raises a ``file:line`` :class:`~procmem.core.ProcmemError` and nothing is imported."""
        return transfer.import_jsonl(self.store, path)
