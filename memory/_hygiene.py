"""Memory hygiene: the rules as small pure functions (trust, retirement, eviction order, counter updates),
and their application to a store (deduplicated writes, use counting, retirement, eviction to the caps).

The README section "Procedural memory" explains the rules; :class:`~procmem.memory.ProceduralMemory`
calls the functions that apply them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from procmem.core import Episode, utc_now
from procmem.core.keys import policy_version
from procmem.memory._entries import ENTRY_LEVELS, Entry, entry_or_none
from procmem.memory._experiences import EXPERIENCE
from procmem.memory._records import set_metadata
from procmem.memory.base import LEVELS, Level, MemoryRecord, Scalar, VectorMemoryStore
from procmem.memory.config import HygieneConfig, TeacherConfig
from procmem.memory.embedding import embed_array

__all__ = [
    "PruneReport",
    "count_use",
    "counted_use",
    "enforce_cap",
    "entry_eviction_key",
    "experience_eviction_key",
    "prune",
    "should_retire",
    "teacher_validated",
    "trust",
    "wilson_lower",
    "write_entry",
]


@dataclass(frozen=True)
class PruneReport:
    retired: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the rules -------------------------------------------------------------------------------------------


def trust(entry: Entry, policy: str | None, config: HygieneConfig) -> float:
    """How much retrieval trusts an entry: its smoothed helpful rate, scaled so that an unused entry
    scores 1, times ``stale_weight`` when the current ``policy`` has not validated it yet."""
    utility = 2.0 * (entry.helpful + 1) / (entry.helpful + entry.harmful + 2)
    stale = policy is not None and entry.validated_version != policy
    return utility * (config.stale_weight if stale else 1.0)


def wilson_lower(successes: int, trials: int, z: float) -> float:
    """The lower bound of the Wilson score interval of ``successes / trials`` at ``z`` standard errors (0 for no
    trials): a pass rate that does not overstate what a handful of uses shows."""
    if trials <= 0:
        return 0.0
    rate = successes / trials
    z2 = z * z
    centre = rate + z2 / (2 * trials)
    spread = z * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


def teacher_validated(entry: Entry, suite_pass_rate: float, config: TeacherConfig) -> bool:
    """Whether the distillation teacher may read ``entry``: a person wrote it, or the verifier validated it in
    use, meaning the episodes that used it (at least ``min_uses``) passed more often than the episodes of its
    suite (``suite_pass_rate``), by the Wilson lower bound at ``z``.

    New advice has no uses, so it is not read: reflected advice is a small model's guess (a 270M reflector once
    advised "multiply the two numbers" for GCD problems), and the teacher's answers become the student's weights.
    """
    if not config.validated_advice_only or entry.source == "operator":
        return True
    if entry.uses < config.min_uses:
        return False
    return wilson_lower(entry.helpful, entry.uses, config.z) > suite_pass_rate


def should_retire(helpful: int, harmful: int, uses: int, stale_failures: int, config: HygieneConfig) -> bool:
    """Harm clearly outweighs help after enough uses, or a newer policy failed with it too often
    without a single pass (it was not re-validated)."""
    harmful_rule = uses >= config.retire_min_uses and (harmful + 1) / (helpful + 1) >= config.retire_ratio
    return harmful_rule or stale_failures >= config.stale_failures


def counted_use(entry: Entry, *, passed: bool, policy: str, now: str, config: HygieneConfig) -> dict[str, Scalar]:
    """The metadata of ``entry`` after one episode of ``policy`` used it and ``passed`` (or not).

    A pass under a policy that had not validated the entry re-validates it; a failure counts against it.
    """
    helpful = entry.helpful + int(passed)
    harmful = entry.harmful + int(not passed)
    uses = entry.uses + 1
    validated, stale_failures = entry.validated_version, entry.stale_failures
    if validated != policy:
        if passed:
            validated, stale_failures = policy, 0
        else:
            stale_failures += 1
    status = entry.status
    if status == "active" and should_retire(helpful, harmful, uses, stale_failures, config):
        status = "retired"
    return {"helpful": helpful, "harmful": harmful, "uses": uses, "validated_version": validated,
            "stale_failures": stale_failures, "status": status, "updated_at": now}


def entry_eviction_key(entry: Entry, policy: str | None, config: HygieneConfig) -> tuple[Any, ...]:
    """Sort key, first evicted first: retired entries, then the least trusted, then the least recently
    updated; the id breaks ties."""
    return (entry.active, trust(entry, policy, config), entry.updated_at, entry.id)


def experience_eviction_key(record: MemoryRecord) -> tuple[Any, ...]:
    """Sort key, first evicted first: failed episodes before passed ones, oldest first. Passed episodes
    are the worked examples and the distillation data, so they go last."""
    meta: Mapping[str, Any] = record.metadata
    return (bool(meta.get("passed", False)), str(meta.get("created_at", "")), record.id)


# --- applied to a store ----------------------------------------------------------------------------------


def write_entry(store: VectorMemoryStore, entry: Entry, config: HygieneConfig) -> Literal["added", "merged"]:
    """Write an insight or pattern, deduplicated: when an entry of the same kind and split is at least
    ``dedup_similarity`` similar, ``entry`` is merged into it (its text and id stay, provenance is
    united, counters are added up) instead of being added."""
    vector = embed_array(store.embedder, [entry.text])
    with store.exclusive():  # a counter update between the read and the write would be lost
        # Only active entries absorb a newcomer: a retired one must not come back through a merge.
        hits = store.query_vector(entry.level, vector[0], k=1,
                                  where={"kind": entry.kind, "split": entry.split, "status": "active"})
        if hits and hits[0].similarity >= config.dedup_similarity:
            existing = entry_or_none(hits[0].record)
            if existing is not None:
                store.upsert([existing.merged_with(entry).to_record()])
                return "merged"
        store.upsert_vectors([entry.to_record()], vector)
    return "added"


def count_use(store: VectorMemoryStore, episode: Episode, config: HygieneConfig
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Count ``episode`` against every insight and pattern it used (:func:`counted_use`); returns the ids
    counted and, among them, those it retired."""
    policy, now = policy_version(episode), utc_now()
    retired: set[str] = set()

    def change(record: MemoryRecord) -> dict[str, Scalar] | None:
        entry = entry_or_none(record)
        if entry is None:
            return None
        new = counted_use(entry, passed=episode.passed, policy=policy, now=now, config=config)
        if entry.active and new["status"] == "retired":
            retired.add(entry.id)
        return new

    counted = [r.id for level in ENTRY_LEVELS for r in store.update(level, episode.memory_ids, change)]
    return tuple(counted), tuple(i for i in counted if i in retired)


def prune(store: VectorMemoryStore, config: HygieneConfig, *, policy: str | None = None,
          dry_run: bool = False) -> PruneReport:
    """Apply the retirement rule to every active entry (settings may have changed), then evict down
    to the size caps. ``policy`` makes stale entries go before validated ones at equal utility."""
    retired: dict[str, int] = {}
    evicted: dict[str, int] = {}
    for level in ENTRY_LEVELS:
        doomed = [e.id for r in store.scan(level, where={"status": "active"})
                  if (e := entry_or_none(r)) is not None
                  and should_retire(e.helpful, e.harmful, e.uses, e.stale_failures, config)]
        retired[level] = len(doomed)
        if doomed and not dry_run:
            store.update(level, doomed, set_metadata({"status": "retired", "updated_at": utc_now()}))
    for any_level in LEVELS:
        evicted[any_level] = enforce_cap(store, any_level, config, policy=policy, dry_run=dry_run)
    return PruneReport(retired, evicted, dry_run)


def enforce_cap(store: VectorMemoryStore, level: Level, config: HygieneConfig, *, policy: str | None,
                dry_run: bool = False) -> int:
    """Evict the records of ``level`` beyond its cap, in eviction order; returns how many (would) go."""
    cap = {"experience": config.max_experiences, "insight": config.max_insights,
           "pattern": config.max_patterns}[level]
    excess = store.count(level) - cap
    if excess <= 0:
        return 0
    records = list(store.scan(level))
    if level == EXPERIENCE:
        victims = sorted(records, key=experience_eviction_key)[:excess]
    else:  # records that are not valid entries go first
        keyed = [(entry_or_none(r), r) for r in records]
        invalid = sorted((r for e, r in keyed if e is None), key=lambda r: r.id)
        valid = sorted(((e, r) for e, r in keyed if e is not None),
                       key=lambda pair: entry_eviction_key(pair[0], policy, config))
        victims = [*invalid, *(r for _, r in valid)][:excess]
    if not dry_run:
        store.delete(level, [r.id for r in victims])
    return len(victims)
