"""Procedural memory, all three levels: experiences → insights → patterns, with hygiene and co-evolution.

What the agent and the CLI call (see README "Procedural memory")::

    memory = open_memory(home.chroma)                        # a ProceduralMemory
    retriever = memory.retriever(policy=policy_version(llm)) # insights + patterns + worked examples
    recorder = memory.recorder(reflector=llm)                # after each episode: record, count, reflect
    memory.reflect(llm, since=..., max_calls=N)              # batch: (re)build insights, consolidate patterns
    memory.prune(policy=...)                                 # retire and evict by the hygiene rules
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from procmem.core import Episode, ProcmemError, Task, utc_now
from procmem.core.keys import policy_version, problem_key
from procmem.core.llm import LLM
from procmem.memory._records import check_metadata
from procmem.memory.base import LEVELS, Level, MemoryRecord, Scalar, VectorMemoryStore
from procmem.memory.config import MemoryConfig
from procmem.memory.consolidation import Cluster, cluster_insights, pattern_fields
from procmem.memory.embedding import embed_array
from procmem.memory.entries import (
    ENTRY_LEVELS,
    Entry,
    EntryLevel,
    entry_id,
    problem_flag,
)
from procmem.memory.experiences import EXPERIENCE, ExperienceMemory
from procmem.memory.hygiene import (
    counted_use,
    entry_eviction_key,
    experience_eviction_key,
    should_retire,
    trust,
)
from procmem.memory.problems import Problem, group_problems
from procmem.memory.reflection import (
    REFLECTION_FORMAT,
    parse_reflection,
    pattern_prompt,
    reflection_generation,
    reflection_primer,
    reflection_prompt,
)
from procmem.memory.retrieval import (
    Advice,
    MemoryContext,
    Retrieval,
    WorkedExample,
    fit_context,
    render_memory,
)

__all__ = [
    "AfterEpisode",
    "ProceduralMemory",
    "ProceduralRetriever",
    "PruneReport",
    "ReflectionReport",
    "parse_since",
]

Progress = Callable[[int, int], None]
"""Called with (done, total) as a long job advances."""

INSIGHT: EntryLevel = "insight"
PATTERN: EntryLevel = "pattern"
_PATTERN_TOPIC_MIN = 0.3  # an LLM pattern summary less similar than this to its cluster is off-topic
_SINCE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_EXPORT_KEYS = {"level", "id", "text", "metadata", "payload"}


@dataclass
class ReflectionReport:
    """What a reflection run did and what it cost."""

    problems: int = 0
    """Judged problems in scope."""
    already_reflected: int = 0
    """Skipped: reflected before by this reflector, and no new episode since."""
    over_budget: int = 0
    """Left for a later run: the call budget ran out."""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unparseable: int = 0
    """Reflections with no valid item: counted, nothing stored."""
    rejected_items: int = 0
    insights_added: int = 0
    insights_merged: int = 0
    pattern_clusters: int = 0
    """Clusters of insights spanning enough problems."""
    patterns_known: int = 0
    """Clusters an existing pattern already covers."""
    pattern_calls: int = 0
    patterns_unparseable: int = 0
    """LLM summaries that were unusable; the cluster's medoid insight became the pattern instead."""
    patterns_added: int = 0
    patterns_merged: int = 0
    evicted: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: ReflectionReport) -> None:
        """Add ``other``'s counts into this report (inline reflections summed over a run)."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def total_calls(self) -> int:
        return self.calls + self.pattern_calls


@dataclass(frozen=True)
class AfterEpisode:
    """What :meth:`ProceduralMemory.after_episode` did."""

    recorded: bool
    """False when this episode id was already stored (a resumed run): its counters were not counted again."""
    counted: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    reflection: ReflectionReport | None = None


@dataclass(frozen=True)
class PruneReport:
    retired: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        """The agent's :class:`~procmem.memory.retrieval.Retriever`; ``policy`` (``policy_version(llm)``) is
        the version now solving, whose validated entries are trusted fully (co-evolution)."""
        return ProceduralRetriever(self, policy=policy, max_chars=max_chars)

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
            counted, retired = self._count_use(episode)
        report = None
        if reflector is not None and self.config.reflection.inline:
            report = ReflectionReport()
            problems = [p for p in group_problems(self._problem_episodes(episode)) if episode.id in p.episode_ids]
            self._reflect(reflector, problems, report, policy=None, max_calls=None, progress=None)
        self._enforce_cap(EXPERIENCE, policy=None)
        return AfterEpisode(recorded=new, counted=counted, retired=retired, reflection=report)

    # --- retrieval -------------------------------------------------------------------------------

    def context_for(self, task: Task, k: int, *, policy: str | None = None) -> MemoryContext:
        """Everything memory holds for ``task`` (before the budget): up to ``k`` worked examples, insights
        of the nearest solved problems, and patterns. Only train-split entries, only active ones; a
        test-split task never sees anything from its own problem."""
        vector = embed_array(self.store.embedder, [task.prompt])[0]
        examples = tuple(WorkedExample.from_episode(e) for e in self.similar_successes(task, k, vector=vector))
        insights = self._insights_for(task, vector, policy)
        patterns = self._patterns_for(vector, policy)
        return MemoryContext(examples, insights, patterns)

    def _insights_for(self, task: Task, vector: npt.NDArray[np.float32], policy: str | None) -> tuple[Advice, ...]:
        cfg = self.config.retrieval
        if cfg.insights <= 0:
            return ()
        own = problem_key(task.prompt)
        near: dict[str, float] = {}
        hits = self.store.query_vector(EXPERIENCE, vector, k=4 * cfg.nearest_problems + 8, where={"split": "train"})
        for hit in hits:
            key = str(hit.record.metadata.get("problem") or problem_key(hit.record.text))
            if hit.similarity < cfg.min_problem_similarity or len(near) >= cfg.nearest_problems:
                break
            if not (task.split == "test" and key == own):
                near.setdefault(key, hit.similarity)
        scored: list[tuple[float, Entry]] = []
        for key, similarity in near.items():
            where: dict[str, Scalar] = {problem_flag(key): True, "status": "active", "split": "train"}
            for record in self.store.scan(INSIGHT, where=where):
                entry = _entry_or_none(record)
                if entry is None or (task.split == "test" and own in entry.problem_ids):
                    continue  # merged across the task's own problem: reflected on its own attempts
                scored.append((similarity * trust(entry, policy, self.config.hygiene), entry))
        return _top_advice(scored, cfg.insights)

    def _patterns_for(self, vector: npt.NDArray[np.float32], policy: str | None) -> tuple[Advice, ...]:
        cfg = self.config.retrieval
        if cfg.patterns <= 0:
            return ()
        where: dict[str, Scalar] = {"status": "active", "split": "train"}
        hits = self.store.query_vector(PATTERN, vector, k=4 * cfg.patterns, where=where)
        scored = [(h.similarity * trust(e, policy, self.config.hygiene), e) for h in hits
                  if h.similarity >= cfg.min_pattern_similarity and (e := _entry_or_none(h.record)) is not None]
        return _top_advice(scored, cfg.patterns)

    # --- reflection ------------------------------------------------------------------------------

    def reflect(self, llm: LLM, *, since: str | None = None, max_calls: int | None = None,
                policy: str | None = None, consolidate: bool = True, progress: Progress | None = None
                ) -> ReflectionReport:
        """The batch job: reflect on every judged problem with an episode finished at or after ``since``
        (ISO time; all when None) that was not reflected on by this reflector since its last new episode,
        then consolidate patterns and enforce the size caps. At most ``max_calls`` LLM calls in total.

        Idempotent: a second run with nothing new makes no call and changes nothing. ``policy`` is the
        policy version the insights are validated for (default: the reflector's own, i.e. self-reflection).
        """
        report = ReflectionReport()
        policy = policy or policy_version(llm)
        splits = set(self.config.reflection.splits)
        episodes = [e for e in self.episodes() if e.task.split in splits]
        problems = [p for p in group_problems(episodes)
                    if since is None or any(e.finished_at >= since for e in p.episodes)]
        self._reflect(llm, problems, report, policy=policy, max_calls=max_calls, progress=progress)
        if consolidate:
            left = None if max_calls is None else max(0, max_calls - report.calls)
            self._consolidate(llm, report, max_calls=left)
        for level in (INSIGHT, PATTERN):
            report.evicted += self._enforce_cap(level, policy=policy)
        return report

    def consolidate(self, llm: LLM | None = None, *, max_calls: int | None = None) -> ReflectionReport:
        """Only the pattern step of :meth:`reflect`; without ``llm`` every pattern is extractive."""
        report = ReflectionReport()
        self._consolidate(llm, report, max_calls=max_calls)
        return report

    def _reflect(self, llm: LLM, problems: Sequence[Problem], report: ReflectionReport, *,
                 policy: str | None, max_calls: int | None, progress: Progress | None) -> None:
        cfg = self.config.reflection
        reflector = policy_version(llm)
        policy = policy or reflector
        signed_by = f"{reflector}#{REFLECTION_FORMAT}"
        judged = [p for p in problems if p.judged and p.split in cfg.splits]
        marks = self._reflection_marks([e for p in judged for e in p.episode_ids])
        todo = [p for p in judged if any(marks.get(e) != p.signature(signed_by) for e in p.episode_ids)]
        report.problems += len(judged)
        report.already_reflected += len(judged) - len(todo)
        if max_calls is not None:
            report.over_budget += max(0, len(todo) - max_calls)
            todo = todo[:max_calls]
        done = 0
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            prompts = [reflection_prompt(p, max_items=cfg.max_items, max_attempts=cfg.max_attempts_shown)
                       for p in batch]
            outputs = llm.generate(prompts, reflection_generation(cfg.max_tokens))
            for problem, output in zip(batch, outputs, strict=True):
                report.calls += 1
                report.prompt_tokens += output.prompt_tokens
                report.completion_tokens += output.completion_tokens
                self._store_reflection(problem, reflection_primer(problem) + output.text, reflector, policy, report)
                self.store.update(EXPERIENCE, problem.episode_ids,
                                  _set({"reflected": problem.signature(signed_by)}))
            done += len(batch)
            if progress is not None:
                progress(done, len(todo))

    def _store_reflection(self, problem: Problem, text: str, reflector: str, policy: str,
                          report: ReflectionReport) -> None:
        cfg = self.config.reflection
        parsed = parse_reflection(text, max_items=cfg.max_items, has_pass=problem.has_pass,
                                  has_failure=problem.has_failure)
        report.rejected_items += len(parsed.rejected)
        if parsed.unparseable:
            report.unparseable += 1
            return
        now = utc_now()
        embed_array(self.store.embedder, [item.text for item in parsed.items])  # one batch (the embedder caches)
        for item in parsed.items:
            entry = Entry(
                id=entry_id(INSIGHT, item.kind, problem.split, problem.key, item.text), level=INSIGHT,
                kind=item.kind, text=item.text, suite=problem.suite, split=problem.split,
                policy_version=problem.policy_version, reflector=reflector, validated_version=policy,
                problem=problem.key, problem_ids=(problem.key,), source_episode_ids=problem.episode_ids,
                evidence={problem.key: problem.evidence()}, method="reflection", created_at=now, updated_at=now,
            )
            if self.write_entry(entry) == "added":
                report.insights_added += 1
            else:
                report.insights_merged += 1

    def _consolidate(self, llm: LLM | None, report: ReflectionReport, *, max_calls: int | None) -> None:
        cfg = self.config.reflection
        insights = [e for r in self.store.scan(INSIGHT, where={"status": "active"})
                    if (e := _entry_or_none(r)) is not None]
        covered = [set(p.source_entry_ids) for r in self.store.scan(PATTERN) if (p := _entry_or_none(r))]
        calls_left = max_calls
        for split in sorted({e.split for e in insights}):
            members = [e for e in insights if e.split == split]
            vectors = embed_array(self.store.embedder, [e.text for e in members])
            for cluster in cluster_insights(members, vectors, cfg.pattern_similarity):
                if len(cluster.problem_ids) < cfg.min_pattern_problems:
                    continue
                report.pattern_clusters += 1
                if any(cluster.member_ids <= known for known in covered):
                    report.patterns_known += 1
                    continue
                use_llm = llm is not None and (calls_left is None or calls_left > 0)
                entry = self._pattern_entry(cluster, split, llm if use_llm else None, report)
                if use_llm and calls_left is not None:
                    calls_left -= 1
                if self.write_entry(entry) == "added":
                    report.patterns_added += 1
                else:
                    report.patterns_merged += 1
                covered.append(set(cluster.member_ids))

    def _pattern_entry(self, cluster: Cluster, split: str, llm: LLM | None,
                       report: ReflectionReport) -> Entry:
        """A pattern for ``cluster``: the LLM's summary when it is usable, else the medoid insight's text."""
        cfg = self.config.reflection
        members = cluster.members[: cfg.max_pattern_members]
        text, method, reflector = cluster.medoid.text, "extractive", "extractive"
        if llm is not None:
            output = llm.generate([pattern_prompt([m.text for m in members])],
                                  reflection_generation(cfg.max_tokens))[0]
            report.pattern_calls += 1
            report.prompt_tokens += output.prompt_tokens
            report.completion_tokens += output.completion_tokens
            summary = self._usable_summary(output.text, cluster)
            if summary is None:
                report.patterns_unparseable += 1
            else:
                text, method, reflector = summary, "summary", policy_version(llm)
        fields: dict[str, Any] = pattern_fields(cluster)
        now = utc_now()
        return Entry(id=entry_id(PATTERN, "pattern", split, "", text), level=PATTERN, kind="pattern", text=text,
                     split=split, reflector=reflector, method=method, created_at=now, updated_at=now, **fields)

    def _usable_summary(self, completion: str, cluster: Cluster) -> str | None:
        parsed = parse_reflection(completion, allowed=("pattern",), max_items=1, default_kind="pattern")
        if parsed.unparseable:
            return None
        text = parsed.items[0].text
        on_topic = float(embed_array(self.store.embedder, [text])[0] @ cluster.centroid) >= _PATTERN_TOPIC_MIN
        return text if on_topic else None

    # --- hygiene ---------------------------------------------------------------------------------

    def write_entry(self, entry: Entry) -> Literal["added", "merged"]:
        """Write an insight or pattern, deduplicated: when an entry of the same kind and split is at least
        ``dedup_similarity`` similar, ``entry`` is merged into it (its text and id stay, provenance is
        united, counters are added up) instead of being added."""
        vector = embed_array(self.store.embedder, [entry.text])
        with self.store.exclusive():  # a counter update between the read and the write would be lost
            # Only active entries absorb a newcomer: a retired one must not come back through a merge.
            hits = self.store.query_vector(entry.level, vector[0], k=1,
                                           where={"kind": entry.kind, "split": entry.split, "status": "active"})
            if hits and hits[0].similarity >= self.config.hygiene.dedup_similarity:
                existing = _entry_or_none(hits[0].record)
                if existing is not None:
                    self.store.upsert([existing.merged_with(entry).to_record()])
                    return "merged"
            self.store.upsert_vectors([entry.to_record()], vector)
        return "added"

    def _count_use(self, episode: Episode) -> tuple[tuple[str, ...], tuple[str, ...]]:
        policy, now, hygiene = policy_version(episode), utc_now(), self.config.hygiene
        retired: set[str] = set()

        def change(record: MemoryRecord) -> dict[str, Scalar] | None:
            entry = _entry_or_none(record)
            if entry is None:
                return None
            new = counted_use(entry, passed=episode.passed, policy=policy, now=now, config=hygiene)
            if entry.active and new["status"] == "retired":
                retired.add(entry.id)
            return new

        counted = [r.id for level in ENTRY_LEVELS for r in self.store.update(level, episode.memory_ids, change)]
        return tuple(counted), tuple(i for i in counted if i in retired)

    def prune(self, *, policy: str | None = None, dry_run: bool = False) -> PruneReport:
        """Apply the retirement rule to every active entry (settings may have changed), then evict down
        to the size caps. ``policy`` makes stale entries go before validated ones at equal utility."""
        hygiene = self.config.hygiene
        retired: dict[str, int] = {}
        evicted: dict[str, int] = {}
        for level in ENTRY_LEVELS:
            doomed = [e.id for r in self.store.scan(level, where={"status": "active"})
                      if (e := _entry_or_none(r)) is not None
                      and should_retire(e.helpful, e.harmful, e.uses, e.stale_failures, hygiene)]
            retired[level] = len(doomed)
            if doomed and not dry_run:
                self.store.update(level, doomed, _set({"status": "retired", "updated_at": utc_now()}))
        for any_level in LEVELS:
            evicted[any_level] = self._enforce_cap(any_level, policy=policy, dry_run=dry_run)
        return PruneReport(retired, evicted, dry_run)

    def _enforce_cap(self, level: Level, *, policy: str | None, dry_run: bool = False) -> int:
        hygiene = self.config.hygiene
        cap = {"experience": hygiene.max_experiences, "insight": hygiene.max_insights,
               "pattern": hygiene.max_patterns}[level]
        excess = self.store.count(level) - cap
        if excess <= 0:
            return 0
        records = list(self.store.scan(level))
        if level == EXPERIENCE:
            victims = sorted(records, key=experience_eviction_key)[:excess]
        else:  # records that are not valid entries go first
            keyed = [(_entry_or_none(r), r) for r in records]
            invalid = sorted((r for e, r in keyed if e is None), key=lambda r: r.id)
            valid = sorted(((e, r) for e, r in keyed if e is not None),
                           key=lambda pair: entry_eviction_key(pair[0], policy, hygiene))
            victims = [*invalid, *(r for _, r in valid)][:excess]
        if not dry_run:
            self.store.delete(level, [r.id for r in victims])
        return len(victims)

    # --- reading ---------------------------------------------------------------------------------

    def entries(self, level: EntryLevel, *, status: str | None = None, kind: str | None = None) -> list[Entry]:
        """Insights or patterns (matching ``status``/``kind``), oldest first."""
        where = {k: v for k, v in (("status", status), ("kind", kind)) if v is not None}
        found = [e for r in self.store.scan(level, where=where) if (e := _entry_or_none(r)) is not None]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    def entry(self, entry_id: str) -> Entry | None:
        for level in ENTRY_LEVELS:
            found = self.store.get(level, [entry_id])
            if found:
                return _entry_or_none(found[0])
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
        path = Path(path)
        lines = [_export_line(r) for level in levels for r in sorted(self.store.scan(level), key=lambda r: r.id)]
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text("".join(lines), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:
            raise ProcmemError(f"cannot write: {err.strerror}", where=str(path), fix="choose a writable file") from err
        return len(lines)

    def import_jsonl(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Read a file written by :meth:`export_jsonl` and upsert every record. Every line is checked first:
        one bad line raises a ``file:line`` :class:`~procmem.core.ProcmemError` and nothing is imported."""
        records = _read_export(Path(path))
        for level in LEVELS:
            batch = [r for r in records if r.level == level]
            for start in range(0, len(batch), 500):
                self.store.upsert(batch[start:start + 500])
        return {level: sum(r.level == level for r in records) for level in LEVELS}

    # --- helpers ---------------------------------------------------------------------------------

    def _problem_episodes(self, episode: Episode) -> list[Episode]:
        """The episodes of ``episode``'s problem that reflection may read: only those of the reflected
        splits, so that a held-out (test) attempt of the same question never reaches a train insight."""
        splits = set(self.config.reflection.splits)
        found: dict[str, Episode] = {}
        for where in ({"problem": problem_key(episode.task.prompt)},
                      {"task_id": episode.task.id, "suite": episode.task.suite}):
            for record in self.store.scan(EXPERIENCE, where=where):
                found[record.id] = Episode.from_dict(record.payload)
        found[episode.id] = episode
        return [e for e in found.values() if e.task.split in splits]

    def _reflection_marks(self, episode_ids: Sequence[str]) -> dict[str, str]:
        marks: dict[str, str] = {}
        for start in range(0, len(episode_ids), 1000):
            for record in self.store.get(EXPERIENCE, episode_ids[start:start + 1000]):
                marks[record.id] = str(record.metadata.get("reflected", ""))
        return marks


class ProceduralRetriever:
    """The agent's retriever over all three levels: insights of the nearest problems, patterns, and up to
    ``k`` worked examples, fitted to the character budget and rendered by the one
    :func:`~procmem.memory.retrieval.render_memory`."""

    def __init__(self, memory: ProceduralMemory, *, policy: str | None = None, max_chars: int | None = None) -> None:
        self.memory = memory
        self.policy = policy
        self.max_chars = memory.config.retrieval.max_chars if max_chars is None else max_chars

    def retrieve(self, task: Task, k: int) -> Retrieval:
        if k <= 0:
            return Retrieval()
        fitted = fit_context(self.memory.context_for(task, k, policy=self.policy), max_chars=self.max_chars)
        return Retrieval(entry_ids=fitted.entry_ids, text=render_memory(fitted, max_chars=self.max_chars))


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or an age such as ``90m``, ``12h``,
    ``7d``, ``2w``; returns the ISO time that episodes' ``finished_at`` is compared with."""
    now = now or datetime.now(timezone.utc)
    age = _SINCE.match(text)
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[age.group(2)]
        moment = now - timedelta(**{unit: int(age.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError as err:
            raise ProcmemError(f"not a time: {text!r}", where="--since",
                               fix="pass an ISO date/time (2026-01-31, 2026-01-31T12:00) or an age (90m, 12h, 7d)"
                               ) from err
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _set(values: Mapping[str, Scalar]) -> Callable[[MemoryRecord], Mapping[str, Scalar]]:
    return lambda _record: values


def _entry_or_none(record: MemoryRecord) -> Entry | None:
    """A stored insight or pattern; a record that is not a valid entry (e.g. written by hand) is skipped."""
    try:
        return Entry.from_record(record)
    except ValueError:
        return None


def _top_advice(scored: Iterable[tuple[float, Entry]], n: int) -> tuple[Advice, ...]:
    best: dict[str, tuple[float, Entry]] = {}
    for score, entry in scored:
        if entry.id not in best or score > best[entry.id][0]:
            best[entry.id] = (score, entry)
    ranked = sorted(best.values(), key=lambda pair: (-pair[0], pair[1].id))
    return tuple(Advice.from_entry(entry) for _, entry in ranked[:n])


def _export_line(record: MemoryRecord) -> str:
    data = {"level": record.level, "id": record.id, "text": record.text, "metadata": dict(record.metadata),
            "payload": dict(record.payload)}
    return json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"


def _read_export(path: Path) -> list[MemoryRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ProcmemError(f"cannot read: {err.strerror}", where=str(path), fix="pass a file made by "
                           "`procmem memory export`") from err
    except UnicodeDecodeError as err:
        raise ProcmemError("is not UTF-8 text", where=str(path), fix="pass a JSONL file made by "
                           "`procmem memory export`") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_import_record(line))
        except ValueError as err:
            raise ProcmemError(str(err), where=f"{path}:{number}",
                               fix="fix or delete that line (nothing was imported)") from err
    return records


def _import_record(line: str) -> MemoryRecord:
    """One export line as a record; raises ValueError saying what is wrong."""
    try:
        data = json.loads(line)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(data, dict) or set(data) != _EXPORT_KEYS:
        raise ValueError(f"expected an object with exactly the keys {sorted(_EXPORT_KEYS)}")
    level, record_id, text = data["level"], data["id"], data["text"]
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels are {', '.join(LEVELS)}")
    if not isinstance(record_id, str) or not record_id or not isinstance(text, str):
        raise ValueError("id must be a non-empty string and text a string")
    if not isinstance(data["metadata"], dict) or not isinstance(data["payload"], dict):
        raise ValueError("metadata and payload must be objects")
    record = MemoryRecord(id=record_id, level=level, text=text, metadata=check_metadata(data["metadata"]),
                          payload=data["payload"])
    if level == EXPERIENCE:
        try:
            episode = Episode.from_dict(record.payload)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"payload is not an episode: {type(err).__name__}: {err}") from err
        if episode.id != record_id:
            raise ValueError(f"payload holds episode {episode.id!r}, not {record_id!r}")
    else:
        Entry.from_record(record)  # raises ValueError when it is not an entry
    return record

