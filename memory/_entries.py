"""The typed entries of levels 2 and 3 (insights and patterns), and what a "problem" is.

A **problem** groups the episodes of one question: the same task id, or a near-duplicate prompt. Near-
duplicate is textual (case, whitespace and spacing around punctuation ignored), not by embedding: MiniLM
puts "What is 3 + 4?" and "What is 4 + 3?" at cosine 0.99, and they are different problems.

An :class:`Entry` maps onto a :class:`~procmem.memory.base.MemoryRecord` as: text → the embedded text;
every scalar field → filterable metadata (so counters and status can change without re-embedding), plus
a ``problem:<key>`` flag per problem; the lists (sources, problems, merge provenance, evidence) → the payload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from procmem.core import utc_now
from procmem.core.keys import normalize_question
from procmem.memory.base import MemoryRecord, Scalar

__all__ = [
    "ENTRY_LEVELS",
    "INSIGHT",
    "KINDS",
    "PATTERN",
    "SOURCES",
    "Entry",
    "EntryLevel",
    "Kind",
    "Source",
    "Status",
    "entry_id",
    "entry_or_none",
    "problem_flag",
    "scope_matches",
    "suite_family",
]

Kind = Literal["strategy", "lesson", "pattern"]
Status = Literal["active", "retired"]
EntryLevel = Literal["insight", "pattern"]
Source = Literal["reflection", "verifier", "operator"]
"""Where an entry came from: the model's reflection (or a summary of reflected insights), the verifier's
feedback read deterministically, or an operator (``procmem memory add``)."""
SOURCES: tuple[Source, ...] = get_args(Source)
KINDS: tuple[Kind, ...] = get_args(Kind)
ENTRY_LEVELS: tuple[EntryLevel, ...] = get_args(EntryLevel)
INSIGHT: EntryLevel = "insight"
PATTERN: EntryLevel = "pattern"

MAX_PROBLEM_FLAGS = 64
"""Problems flagged in an entry's metadata; an insight backed by more problems is surely a pattern too."""


def problem_flag(key: str) -> str:
    """The metadata key that marks an entry as backed by problem ``key``."""
    return f"problem:{key}"


def suite_family(suite: str) -> str:
    """A suite spec without its options: ``rg:products?min_digits=2`` → ``rg:products``."""
    return suite.strip().split("?", 1)[0]


def scope_matches(scope: str, suite: str) -> bool:
    """Whether an entry scoped to ``scope`` applies to a task of ``suite``: the same spec, or the spec's family
    (``rg:products`` covers every ``rg:products?...``). An empty scope matches nothing (such entries are found
    through their problems or by similarity)."""
    scope = scope.strip()
    return bool(scope) and scope in (suite.strip(), suite_family(suite))


def entry_id(level: EntryLevel, kind: Kind, split: str, anchor: str, text: str) -> str:
    """A deterministic id: the same advice about the same problem (or cluster) gets the same id."""
    digest = hashlib.sha1("\x1f".join((kind, split, anchor, normalize_question(text))).encode()).hexdigest()
    return f"{'ins' if level == 'insight' else 'pat'}-{digest[:16]}"


@dataclass(frozen=True)
class Entry:
    """One insight (kind strategy or lesson) or pattern (kind pattern).

    ``problem`` is the primary problem of an insight ("" for a pattern); ``problem_ids`` lists every
    problem the entry is backed by, with verifier outcomes per problem in ``evidence``
    (``{problem: {"episodes": n, "passed": m, "attempts": a}}``). ``policy_version`` is the policy whose
    episodes it came from, ``reflector`` the model that wrote the text (the same one, for self-reflection).
    ``validated_version`` is the policy that last confirmed it (see README: co-evolution).
    """

    id: str
    level: EntryLevel
    kind: Kind
    text: str
    suite: str
    split: str
    policy_version: str
    reflector: str
    problem: str = ""
    problem_ids: tuple[str, ...] = ()
    source_episode_ids: tuple[str, ...] = ()
    source_entry_ids: tuple[str, ...] = ()
    """Patterns: the insights consolidated into it."""
    merged_ids: tuple[str, ...] = ()
    """Ids of entries merged into this one on write (dedup)."""
    evidence: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    method: str = "reflection"
    """How the text was made: ``reflection``, ``summary`` (an LLM summary), ``extractive`` (the medoid),
    ``feedback`` (read from verifier feedback) or ``operator`` (written by hand)."""
    source: Source = "reflection"
    """Where it came from (see :data:`Source`)."""
    scope: str = ""
    """The suite spec or family (``rg:products``) it applies to: retrieval gives it to every task of that scope
    (:func:`scope_matches`). Empty: found through its problems (insights) or by similarity (patterns)."""
    validated_version: str = ""
    created_at: str = field(default_factory=utc_now)
    updated_at: str = field(default_factory=utc_now)
    helpful: int = 0
    harmful: int = 0
    uses: int = 0
    stale_failures: int = 0
    status: Status = "active"
    changes: tuple[Mapping[str, str], ...] = ()
    """Every change an operator made, oldest first: ``{"at": ISO time, "by": who, "action": "add" | "edit" |
    "retire" | "restore", ...}`` (an edit keeps the text it replaced under ``"before"``)."""

    def __post_init__(self) -> None:
        if self.level not in ENTRY_LEVELS:
            raise ValueError(f"an Entry is an insight or a pattern, not {self.level!r}")
        if self.kind not in KINDS or (self.kind == "pattern") != (self.level == "pattern"):
            raise ValueError(f"kind {self.kind!r} does not fit level {self.level!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.status not in ("active", "retired"):
            raise ValueError(f"status must be active or retired, not {self.status!r}")
        if not self.text.strip():
            raise ValueError("an Entry needs text")
        if not self.validated_version:
            object.__setattr__(self, "validated_version", self.policy_version)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def to_record(self) -> MemoryRecord:
        return MemoryRecord(id=self.id, level=self.level, text=self.text, metadata=self.metadata(),
                            payload=self.payload())

    def metadata(self) -> dict[str, Scalar]:
        """Filterable scalars; plus one ``problem:<key>: True`` flag per problem it is backed by (the first
        :data:`MAX_PROBLEM_FLAGS`), so that retrieval finds a merged insight from any of its problems."""
        flags: dict[str, Scalar] = {problem_flag(key): True for key in self.problem_ids[:MAX_PROBLEM_FLAGS]}
        return {**flags,
            "kind": self.kind, "suite": self.suite, "split": self.split, "problem": self.problem,
            "n_problems": len(self.problem_ids), "policy_version": self.policy_version,
            "reflector": self.reflector, "validated_version": self.validated_version, "method": self.method,
            "source": self.source, "scope": self.scope,
            "created_at": self.created_at, "updated_at": self.updated_at, "helpful": self.helpful,
            "harmful": self.harmful, "uses": self.uses, "stale_failures": self.stale_failures,
            "status": self.status,
        }

    def payload(self) -> dict[str, Any]:
        return {
            "problem_ids": list(self.problem_ids), "source_episode_ids": list(self.source_episode_ids),
            "source_entry_ids": list(self.source_entry_ids), "merged_ids": list(self.merged_ids),
            "evidence": {k: dict(v) for k, v in self.evidence.items()},
            "changes": [dict(c) for c in self.changes],
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-plain (what ``procmem memory show --json`` prints)."""
        scalars = {k: v for k, v in self.metadata().items() if not k.startswith(problem_flag(""))}
        return {"id": self.id, "level": self.level, "text": self.text, **scalars, **self.payload()}

    @classmethod
    def from_record(cls, record: MemoryRecord) -> Entry:
        """Read a stored record back; raises ValueError when it is not a valid entry."""
        meta, payload = record.metadata, record.payload
        try:
            return cls(
                id=record.id, level=cast(EntryLevel, record.level), kind=cast(Kind, meta["kind"]), text=record.text,
                suite=str(meta["suite"]), split=str(meta["split"]), problem=str(meta.get("problem", "")),
                policy_version=str(meta["policy_version"]), reflector=str(meta["reflector"]),
                validated_version=str(meta.get("validated_version", "")), method=str(meta.get("method", "")),
                source=cast(Source, meta.get("source", "reflection")), scope=str(meta.get("scope", "")),
                created_at=str(meta["created_at"]), updated_at=str(meta["updated_at"]),
                helpful=int(meta.get("helpful", 0)), harmful=int(meta.get("harmful", 0)),
                uses=int(meta.get("uses", 0)), stale_failures=int(meta.get("stale_failures", 0)),
                status=cast(Status, meta.get("status", "active")),
                problem_ids=_strings(payload.get("problem_ids", ())),
                source_episode_ids=_strings(payload.get("source_episode_ids", ())),
                source_entry_ids=_strings(payload.get("source_entry_ids", ())),
                merged_ids=_strings(payload.get("merged_ids", ())),
                evidence={str(k): {str(a): int(b) for a, b in v.items()}
                          for k, v in dict(payload.get("evidence") or {}).items()},
                changes=tuple({str(a): str(b) for a, b in dict(c).items()} for c in payload.get("changes") or ()),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"record {record.id!r} is not a memory entry: missing or bad {err}") from err

    def merged_with(self, other: Entry, *, now: str | None = None) -> Entry:
        """This entry (text, id and status kept) with the newcomer ``other`` folded in: provenance united,
        counters added up, validated for ``other``'s policy."""
        evidence = {k: dict(v) for k, v in self.evidence.items()}
        for problem, counts in other.evidence.items():
            mine = evidence.setdefault(problem, {})
            for key, value in counts.items():
                mine[key] = max(mine.get(key, 0), value)  # both count the same episodes: take the larger
        # ``other`` is the newcomer: writing it again re-derives this entry under its policy, which
        # re-validates the entry for that policy (see README: co-evolution).
        revalidated = other.validated_version != self.validated_version
        return replace(
            self,
            problem_ids=_union(self.problem_ids, other.problem_ids),
            source_episode_ids=_union(self.source_episode_ids, other.source_episode_ids),
            source_entry_ids=_union(self.source_entry_ids, other.source_entry_ids),
            merged_ids=_union(self.merged_ids, (other.id,) if other.id != self.id else (), other.merged_ids),
            evidence=evidence,
            validated_version=other.validated_version,
            created_at=min(self.created_at, other.created_at),
            updated_at=now or utc_now(),
            helpful=self.helpful + other.helpful,
            harmful=self.harmful + other.harmful,
            uses=self.uses + other.uses,
            stale_failures=0 if revalidated else self.stale_failures + other.stale_failures,
            changes=(*self.changes, *(c for c in other.changes if c not in self.changes)),
        )


def entry_or_none(record: MemoryRecord) -> Entry | None:
    """A stored insight or pattern; a record that is not a valid entry (e.g. written by hand) is None."""
    try:
        return Entry.from_record(record)
    except ValueError:
        return None


def _strings(values: Any) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"expected a list of strings, got {type(values).__name__}")
    return tuple(str(v) for v in values)


def _union(*groups: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))
