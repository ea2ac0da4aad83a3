"""How memory learns: reflection on judged problems (level 1 → insights, level 2), lessons read from the
verifier's feedback (:mod:`._feedback_lessons`), and consolidation of insights into patterns (level 3), with the
report of what it did and what it cost.

**Constrained reflection.** When the reflector honours grammars (``supports_grammar``, the llama.cpp engine),
every reflection is decoded under :func:`~procmem.memory._reflection.reflection_grammar`, so its output always
has the asked-for form. Other backends (transformers, LiteLLM) get the prefilled label, the stop strings and the
tolerant parser, and an unparseable output is retried once with sampling (``retries`` in the report).

This module runs the jobs; the pieces it runs live beside it: :mod:`._problems` (what a problem is),
:mod:`._reflection` (prompts and the tolerant parser), :mod:`._consolidation` (clustering) and
:mod:`._hygiene` (deduplicated writes, size caps). :class:`~procmem.memory.ProceduralMemory`
calls :func:`reflect`, :func:`reflect_on_episode` and :func:`consolidate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from procmem.core import Episode, utc_now
from procmem.core.keys import policy_version, problem_key
from procmem.core.llm import LLM, Generation
from procmem.memory._consolidation import Cluster, cluster_insights, pattern_fields
from procmem.memory._entries import INSIGHT, PATTERN, SOURCES, Entry, Kind, Source, entry_id, entry_or_none
from procmem.memory._experiences import EXPERIENCE
from procmem.memory._feedback_lessons import FeedbackLesson, feedback_lessons
from procmem.memory._hygiene import enforce_cap, write_entry
from procmem.memory._problems import Problem, group_problems
from procmem.memory._records import set_metadata
from procmem.memory._reflection import (
    REFLECTION_FORMAT,
    ParsedReflection,
    parse_reflection,
    pattern_grammar,
    pattern_prompt,
    reflection_generation,
    reflection_grammar,
    reflection_primer,
    reflection_prompt,
)
from procmem.memory.base import VectorMemoryStore
from procmem.memory.config import MemoryConfig
from procmem.memory.embedding import embed_array

__all__ = ["Progress", "ReflectionReport", "consolidate", "reflect", "reflect_on_episode", "write_feedback_lessons"]

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
    """Reflection calls (one per problem reflected on; ``max_calls`` bounds them with the pattern calls)."""
    constrained_calls: int = 0
    """Calls decoded under the reflection grammar (the reflector supports grammars)."""
    parsed_calls: int = 0
    """Calls and retries whose output gave at least one valid item (``parse_rate`` = parsed_calls / (calls +
    retries))."""
    retries: int = 0
    """Unconstrained reflections retried once, with sampling, after an unparseable output (at most one per
    call, on top of ``max_calls``)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unparseable: int = 0
    """Problems whose reflection (after any retry) had no valid item: counted, nothing stored."""
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
    verifier_insights_added: int = 0
    """Lessons read from the feedback of one problem's failed attempts (source verifier)."""
    verifier_insights_merged: int = 0
    verifier_patterns_added: int = 0
    """Lessons the feedback of a whole suite family supports, scoped to it (source verifier)."""
    verifier_patterns_merged: int = 0
    evicted: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def parse_rate(self) -> float | None:
        """The share of reflection calls whose output gave a valid item; None before any call."""
        made = self.calls + self.retries
        return self.parsed_calls / made if made else None

    def add(self, other: ReflectionReport) -> None:
        """Add ``other``'s counts into this report (inline reflections summed over a run)."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def total_calls(self) -> int:
        return self.calls + self.retries + self.pattern_calls


def reflect(store: VectorMemoryStore, config: MemoryConfig, llm: LLM, episodes: Sequence[Episode], *,
            since: str | None = None, max_calls: int | None = None, policy: str | None = None,
            consolidate_patterns: bool = True, feedback: bool = True,
            progress: Progress | None = None) -> ReflectionReport:
    """The batch job over ``episodes`` (all of the memory's): see :meth:`ProceduralMemory.reflect
    <procmem.memory._procedural.ProceduralMemory.reflect>`. ``feedback`` also writes the verifier-grounded
    lessons of the problems in scope (no model call)."""
    report = ReflectionReport()
    policy = policy or policy_version(llm)
    splits = set(config.reflection.splits)
    problems = [p for p in group_problems(e for e in episodes if e.task.split in splits)
                if since is None or any(e.finished_at >= since for e in p.episodes)]
    _reflect(store, config, llm, problems, report, policy=policy, max_calls=max_calls, progress=progress)
    if feedback:
        write_feedback_lessons(store, config, [p for p in problems if p.judged], report, policy=policy)
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
    constrained = bool(getattr(llm, "supports_grammar", False))
    done = 0
    for start in range(0, len(todo), cfg.batch_size):
        batch = todo[start:start + cfg.batch_size]
        outputs = _reflections(llm, batch, config, constrained=constrained)
        for problem, output in zip(batch, outputs, strict=True):
            text = reflection_primer(problem) + _finished(output)
            parsed = _parse(problem, text, config)
            report.calls += 1
            report.constrained_calls += constrained
            report.prompt_tokens += output.prompt_tokens
            report.completion_tokens += output.completion_tokens
            if parsed.unparseable and not constrained:  # the fallback: one sampled retry
                retry = _reflections(llm, [problem], config, constrained=False, sample=True)[0]
                report.retries += 1
                report.prompt_tokens += retry.prompt_tokens
                report.completion_tokens += retry.completion_tokens
                report.rejected_items += len(parsed.rejected)
                text = reflection_primer(problem) + _finished(retry)
                parsed = _parse(problem, text, config)
            report.parsed_calls += not parsed.unparseable  # the retry's, if any; the first try did not parse
            _store_reflection(store, config, problem, parsed, reflector, policy, report)
            store.update(EXPERIENCE, problem.episode_ids, set_metadata({"reflected": problem.signature(signed_by)}))
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))


_RETRY_TEMPERATURE = 0.7
_RETRY_SEED = 0


def _reflections(llm: LLM, problems: Sequence[Problem], config: MemoryConfig, *, constrained: bool,
                 sample: bool = False) -> list[Generation]:
    """One reflection per problem, in order: under each problem's grammar when ``constrained`` (one call per
    distinct grammar), else plain (``sample``: the fallback's seeded sampling)."""
    cfg = config.reflection
    base = reflection_generation(cfg.max_tokens)
    if sample:
        base = base.model_copy(update={"temperature": _RETRY_TEMPERATURE, "seed": _RETRY_SEED})
    prompts = [reflection_prompt(p, max_items=cfg.max_items, max_attempts=cfg.max_attempts_shown) for p in problems]
    grammars = [reflection_grammar(p, max_items=cfg.max_items) if constrained else None for p in problems]
    outputs: list[Generation | None] = [None] * len(problems)
    for grammar in dict.fromkeys(grammars):
        rows = [i for i, g in enumerate(grammars) if g == grammar]
        generation = base.model_copy(update={"grammar": grammar})
        for i, output in zip(rows, llm.generate([prompts[i] for i in rows], generation), strict=True):
            outputs[i] = output
    return [o for o in outputs if o is not None]


def _finished(output: Generation) -> str:
    """``output.text`` without a last line that the token limit cut off mid-sentence. Every item is a sentence
    (under the grammar it must end with a full stop), and a cut one is half a piece of advice that validation
    could still pass ("When the answer", seen in bench_memory_levels)."""
    text = output.text
    if output.finish_reason != "length" or text.rstrip().endswith((".", "!", "?")):
        return text
    return text[:text.rfind("\n") + 1]


def _parse(problem: Problem, text: str, config: MemoryConfig) -> ParsedReflection:
    return parse_reflection(text, max_items=config.reflection.max_items, has_pass=problem.has_pass,
                            has_failure=problem.has_failure)


def _store_reflection(store: VectorMemoryStore, config: MemoryConfig, problem: Problem, parsed: ParsedReflection,
                      reflector: str, policy: str, report: ReflectionReport) -> None:
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


def write_feedback_lessons(store: VectorMemoryStore, config: MemoryConfig, problems: Sequence[Problem],
                           report: ReflectionReport, *, policy: str) -> None:
    """Write the verifier-grounded lessons of ``problems`` (:func:`~procmem.memory._feedback_lessons.feedback_lessons`):
    per-problem insights and suite-family patterns, ``source="verifier"``, deduplicated like every entry."""
    judged = [p for p in problems if p.judged and p.split in config.reflection.splits]
    lessons = feedback_lessons(judged, min_problems=config.reflection.min_pattern_problems)
    by_key = {p.key: p for p in judged}
    if lessons:
        embed_array(store.embedder, [lesson.text for lesson in lessons])  # one batch (the embedder caches)
    for lesson in lessons:
        entry = _feedback_entry(lesson, [by_key[k] for k in lesson.problems], policy)
        added = write_entry(store, entry, config.hygiene) == "added"
        if entry.level == INSIGHT:
            report.verifier_insights_added += added
            report.verifier_insights_merged += not added
        else:
            report.verifier_patterns_added += added
            report.verifier_patterns_merged += not added


def _feedback_entry(lesson: FeedbackLesson, problems: Sequence[Problem], policy: str) -> Entry:
    now = utc_now()
    level = INSIGHT if lesson.problem else PATTERN
    kind: Kind = "lesson" if level == INSIGHT else "pattern"
    split = problems[0].split
    return Entry(
        id=entry_id(level, kind, split, lesson.problem or lesson.scope, lesson.text), level=level, kind=kind,
        text=lesson.text, suite=lesson.suite, split=split, policy_version=problems[0].policy_version,
        reflector="verifier", validated_version=policy, problem=lesson.problem, problem_ids=lesson.problems,
        source_episode_ids=tuple(e for p in problems for e in p.episode_ids),
        evidence={p.key: p.evidence() for p in problems}, method="feedback", source="verifier", scope=lesson.scope,
        created_at=now, updated_at=now,
    )


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
        generation = reflection_generation(cfg.max_tokens)
        if getattr(llm, "supports_grammar", False):
            generation = generation.model_copy(update={"grammar": pattern_grammar()})
        output = llm.generate([pattern_prompt([m.text for m in members])], generation)[0]
        report.pattern_calls += 1
        report.prompt_tokens += output.prompt_tokens
        report.completion_tokens += output.completion_tokens
        summary = _usable_summary(store, _finished(output), cluster)
        if summary is None:
            report.patterns_unparseable += 1
        else:
            text, method, reflector = summary, "summary", policy_version(llm)
    fields: dict[str, Any] = pattern_fields(cluster)
    now = utc_now()
    return Entry(id=entry_id(PATTERN, "pattern", split, "", text), level=PATTERN, kind="pattern", text=text,
                 split=split, reflector=reflector, method=method, source=_source_of(cluster), created_at=now,
                 updated_at=now, **fields)


def _source_of(cluster: Cluster) -> Source:
    """A pattern's source: its members' most common one (ties go to the first in :data:`SOURCES` order)."""
    counts = {source: sum(m.source == source for m in cluster.members) for source in SOURCES}
    return max(SOURCES, key=lambda source: counts[source])


def _usable_summary(store: VectorMemoryStore, completion: str, cluster: Cluster) -> str | None:
    parsed = parse_reflection(completion, allowed=("pattern",), max_items=1, default_kind="pattern")
    if parsed.unparseable:
        return None
    text = parsed.items[0].text
    on_topic = float(embed_array(store.embedder, [text])[0] @ cluster.centroid) >= _PATTERN_TOPIC_MIN
    return text if on_topic else None
