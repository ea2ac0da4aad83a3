"""Memory hygiene rules as small pure functions: trust, retirement, eviction order, counter updates.

The README section "Procedural memory" explains them; :class:`~procmem.memory.procedural.ProceduralMemory`
applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from procmem.memory.base import MemoryRecord, Scalar
from procmem.memory.config import HygieneConfig
from procmem.memory.entries import Entry

__all__ = ["counted_use", "entry_eviction_key", "experience_eviction_key", "should_retire", "trust"]


def trust(entry: Entry, policy: str | None, config: HygieneConfig) -> float:
    """How much retrieval trusts an entry: its smoothed helpful rate, scaled so that an unused entry
    scores 1, times ``stale_weight`` when the current ``policy`` has not validated it yet."""
    utility = 2.0 * (entry.helpful + 1) / (entry.helpful + entry.harmful + 2)
    stale = policy is not None and entry.validated_version != policy
    return utility * (config.stale_weight if stale else 1.0)


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
