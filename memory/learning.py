"""How memory learns: reflection on judged problems (level 1 → insights, level 2) and consolidation of
insights into patterns (level 3), with the report of what it did and what it cost.

This module runs the jobs; the pieces it runs live beside it: :mod:`.problems` (what a problem is),
:mod:`.reflection` (prompts and the tolerant parser), :mod:`.consolidation` (clustering) and
:mod:`.hygiene` (deduplicated writes, size caps). :class:`~procmem.memory.procedural.ProceduralMemory`
calls :func:`reflect`, :func:`reflect_on_episode` and :func:`consolidate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from procmem.core import Episode, utc_now
from procmem.core.keys import policy_version, problem_key
from procmem.core.llm import LLM
from procmem.memory._records import set_metadata
from procmem.memory.base import VectorMemoryStore
from procmem.memory.config import MemoryConfig
from procmem.memory.consolidation import Cluster, cluster_insights, pattern_fields
from procmem.memory.embedding import embed_array
from procmem.memory.entries import INSIGHT, PATTERN, Entry, entry_id, entry_or_none
from procmem.memory.experiences import EXPERIENCE
from procmem.memory.hygiene import enforce_cap, write_entry
from procmem.memory.problems import Problem, group_problems
from procmem.memory.reflection import (
    REFLECTION_FORMAT,
    parse_reflection,
    pattern_prompt,
    reflection_generation,
    reflection_primer,
    reflection_prompt,
)

__all__ = ["Progress", "ReflectionReport", "consolidate", "reflect", "reflect_on_episode"]

Progress = Callable[[int, int], None]
"""Called with (done, total) as a long job advances."""

_PATTERN_TOPIC_MIN = 0.3  # an LLM pattern summary less similar than this to its cluster is off-topic
_MARKS_BATCH = 1000


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


def reflect(store: VectorMemoryStore, config: MemoryConfig, llm: LLM, episodes: Sequence[Episode], *,
            since: str | None = None, max_calls: int | None = None, policy: str | None = None,
            consolidate_patterns: bool = True, progress: Progress | None = None) -> ReflectionReport:
    """The batch job over ``episodes`` (all of the memory's): see :meth:`ProceduralMemory.reflect
    <procmem.memory.procedural.ProceduralMemory.reflect>`."""
    report = ReflectionReport()
    policy = policy or policy_version(llm)
    splits = set(config.reflection.splits)
    problems = [p for p in group_problems(e for e in episodes if e.task.split in splits)
                if since is None or any(e.finished_at >= since for e in p.episodes)]
    _reflect(store, config, llm, problems, report, policy=policy, max_calls=max_calls, progress=progress)
    if consolidate_patterns:
        left = None if max_calls is None else max(0, max_calls - report.calls)
        _consolidate(store, config, llm, report, max_calls=left)
    for level in (INSIGHT, PATTERN):
        report.evicted += enforce_cap(store, level, config.hygiene, policy=policy)
    return report


def reflect_on_episode(store: VectorMemoryStore, config: MemoryConfig, llm: LLM, episode: Episode
                       ) -> ReflectionReport:
    """Inline reflection: reflect on ``episode``'s problem if it has a new episode since its last
    reflection by ``llm`` (at most one LLM call)."""
    report = ReflectionReport()
    problems = [p for p in group_problems(_problem_episodes(store, config, episode))
                if episode.id in p.episode_ids]
    _reflect(store, config, llm, problems, report, policy=None, max_calls=None, progress=None)
    return report


def consolidate(store: VectorMemoryStore, config: MemoryConfig, llm: LLM | None = None, *,
                max_calls: int | None = None) -> ReflectionReport:
    """Only the pattern step of :func:`reflect`; without ``llm`` every pattern is extractive."""
    report = ReflectionReport()
    _consolidate(store, config, llm, report, max_calls=max_calls)
    return report


# --- reflection: problems → insights ------------------------------------------------------------------


def _reflect(store: VectorMemoryStore, config: MemoryConfig, llm: LLM, problems: Sequence[Problem],
             report: ReflectionReport, *, policy: str | None, max_calls: int | None,
             progress: Progress | None) -> None:
    cfg = config.reflection
    reflector = policy_version(llm)
    policy = policy or reflector
    signed_by = f"{reflector}#{REFLECTION_FORMAT}"
    judged = [p for p in problems if p.judged and p.split in cfg.splits]
    marks = _reflection_marks(store, [e for p in judged for e in p.episode_ids])
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
            _store_reflection(store, config, problem, reflection_primer(problem) + output.text, reflector,
                              policy, report)
            store.update(EXPERIENCE, problem.episode_ids, set_metadata({"reflected": problem.signature(signed_by)}))
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))


def _store_reflection(store: VectorMemoryStore, config: MemoryConfig, problem: Problem, text: str,
                      reflector: str, policy: str, report: ReflectionReport) -> None:
    cfg = config.reflection
    parsed = parse_reflection(text, max_items=cfg.max_items, has_pass=problem.has_pass,
                              has_failure=problem.has_failure)
    report.rejected_items += len(parsed.rejected)
    if parsed.unparseable:
        report.unparseable += 1
        return
    now = utc_now()
    embed_array(store.embedder, [item.text for item in parsed.items])  # one batch (the embedder caches)
    for item in parsed.items:
        entry = Entry(
            id=entry_id(INSIGHT, item.kind, problem.split, problem.key, item.text), level=INSIGHT,
            kind=item.kind, text=item.text, suite=problem.suite, split=problem.split,
            policy_version=problem.policy_version, reflector=reflector, validated_version=policy,
            problem=problem.key, problem_ids=(problem.key,), source_episode_ids=problem.episode_ids,
            evidence={problem.key: problem.evidence()}, method="reflection", created_at=now, updated_at=now,
        )
        if write_entry(store, entry, config.hygiene) == "added":
            report.insights_added += 1
        else:
            report.insights_merged += 1


def _problem_episodes(store: VectorMemoryStore, config: MemoryConfig, episode: Episode) -> list[Episode]:
    """The episodes of ``episode``'s problem that reflection may read: only those of the reflected
    splits, so that a held-out (test) attempt of the same question never reaches a train insight."""
    splits = set(config.reflection.splits)
    found: dict[str, Episode] = {}
    for where in ({"problem": problem_key(episode.task.prompt)},
                  {"task_id": episode.task.id, "suite": episode.task.suite}):
        for record in store.scan(EXPERIENCE, where=where):
            found[record.id] = Episode.from_dict(record.payload)
    found[episode.id] = episode
    return [e for e in found.values() if e.task.split in splits]


def _reflection_marks(store: VectorMemoryStore, episode_ids: Sequence[str]) -> dict[str, str]:
    marks: dict[str, str] = {}
    for start in range(0, len(episode_ids), _MARKS_BATCH):
        for record in store.get(EXPERIENCE, episode_ids[start:start + _MARKS_BATCH]):
            marks[record.id] = str(record.metadata.get("reflected", ""))
    return marks


# --- consolidation: insights → patterns ---------------------------------------------------------------


def _consolidate(store: VectorMemoryStore, config: MemoryConfig, llm: LLM | None, report: ReflectionReport, *,
                 max_calls: int | None) -> None:
    cfg = config.reflection
    insights = [e for r in store.scan(INSIGHT, where={"status": "active"}) if (e := entry_or_none(r)) is not None]
    covered = [set(p.source_entry_ids) for r in store.scan(PATTERN) if (p := entry_or_none(r))]
    calls_left = max_calls
    for split in sorted({e.split for e in insights}):
        members = [e for e in insights if e.split == split]
        vectors = embed_array(store.embedder, [e.text for e in members])
        for cluster in cluster_insights(members, vectors, cfg.pattern_similarity):
            if len(cluster.problem_ids) < cfg.min_pattern_problems:
                continue
            report.pattern_clusters += 1
            if any(cluster.member_ids <= known for known in covered):
                report.patterns_known += 1
                continue
            use_llm = llm is not None and (calls_left is None or calls_left > 0)
            entry = _pattern_entry(store, config, cluster, split, llm if use_llm else None, report)
            if use_llm and calls_left is not None:
                calls_left -= 1
            if write_entry(store, entry, config.hygiene) == "added":
                report.patterns_added += 1
            else:
                report.patterns_merged += 1
            covered.append(set(cluster.member_ids))


def _pattern_entry(store: VectorMemoryStore, config: MemoryConfig, cluster: Cluster, split: str, llm: LLM | None,
                   report: ReflectionReport) -> Entry:
    """A pattern for ``cluster``: the LLM's summary when it is usable, else the medoid insight's text."""
    cfg = config.reflection
    members = cluster.members[: cfg.max_pattern_members]
    text, method, reflector = cluster.medoid.text, "extractive", "extractive"
    if llm is not None:
        output = llm.generate([pattern_prompt([m.text for m in members])], reflection_generation(cfg.max_tokens))[0]
        report.pattern_calls += 1
        report.prompt_tokens += output.prompt_tokens
        report.completion_tokens += output.completion_tokens
        summary = _usable_summary(store, output.text, cluster)
        if summary is None:
            report.patterns_unparseable += 1
        else:
            text, method, reflector = summary, "summary", policy_version(llm)
    fields: dict[str, Any] = pattern_fields(cluster)
    now = utc_now()
    return Entry(id=entry_id(PATTERN, "pattern", split, "", text), level=PATTERN, kind="pattern", text=text,
                 split=split, reflector=reflector, method=method, created_at=now, updated_at=now, **fields)


def _usable_summary(store: VectorMemoryStore, completion: str, cluster: Cluster) -> str | None:
    parsed = parse_reflection(completion, allowed=("pattern",), max_items=1, default_kind="pattern")
    if parsed.unparseable:
        return None
    text = parsed.items[0].text
    on_topic = float(embed_array(store.embedder, [text])[0] @ cluster.centroid) >= _PATTERN_TOPIC_MIN
    return text if on_topic else None
