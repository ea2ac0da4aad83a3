"""Typed settings of procedural memory: retrieval, reflection and hygiene (see README "Procedural memory")."""

from __future__ import annotations

from pydantic import Field

from procmem.core.config import Config

__all__ = ["HygieneConfig", "MemoryConfig", "ReflectionConfig", "RetrievalConfig", "TeacherConfig"]


class RetrievalConfig(Config):
    """What one task gets from memory, and how much of it."""

    insights: int = Field(default=3, ge=0, le=32, description="Most insights (strategies, lessons) per task.")
    patterns: int = Field(default=2, ge=0, le=32, description="Most patterns per task, by embedding top-k.")
    nearest_problems: int = Field(default=3, ge=1, le=32,
                                  description="Insights come from this many nearest solved problems.")
    min_problem_similarity: float = Field(default=0.5, ge=-1.0, le=1.0,
                                          description="A problem less similar (cosine) than this gives no insights.")
    min_pattern_similarity: float = Field(default=0.15, ge=-1.0, le=1.0,
                                          description="A pattern less similar (cosine) to the task is left out.")
    max_chars: int = Field(default=2000, ge=0, le=100_000,
                           description="Budget of the rendered memory block in characters (~4 per token).")


class ReflectionConfig(Config):
    """How the policy model reflects on problems and summarises patterns."""

    max_tokens: int = Field(default=96, ge=8, le=2048, description="Most new tokens of one reflection.")
    max_items: int = Field(default=4, ge=1, le=16, description="Most insights kept from one reflection.")
    max_attempts_shown: int = Field(default=6, ge=1, le=50,
                                    description="Most attempts of a problem shown to the reflector.")
    batch_size: int = Field(default=8, ge=1, le=64, description="Reflection prompts sent to the model at once.")
    inline: bool = Field(default=True,
                         description="Reflect on a problem right after each episode (when a reflector is set).")
    splits: tuple[str, ...] = Field(default=("train",), description="Only episodes of these splits are reflected on.")
    pattern_similarity: float = Field(default=0.6, ge=0.0, le=1.0,
                                      description="Insights at least this similar (cosine) may form one pattern.")
    min_pattern_problems: int = Field(default=2, ge=2, le=100,
                                      description="A pattern spans at least this many problems.")
    max_pattern_members: int = Field(default=8, ge=2, le=64,
                                     description="Most insights shown when summarising a pattern.")


class HygieneConfig(Config):
    """Dedup, counters, retirement, size caps and co-evolution."""

    dedup_similarity: float = Field(default=0.9, ge=0.0, le=1.0,
                                    description="A new entry this similar (cosine) to one of its kind merges into it.")
    retire_min_uses: int = Field(default=6, ge=1, description="Uses before an entry may be retired for harm.")
    retire_ratio: float = Field(default=3.0, gt=1.0,
                                description="Retire when (harmful + 1) / (helpful + 1) reaches this, after min uses.")
    stale_weight: float = Field(default=0.5, gt=0.0, le=1.0,
                                description="Retrieval weight of an entry not yet re-validated by the current policy.")
    stale_failures: int = Field(default=3, ge=1,
                                description="Failures under a newer policy, without a pass, that retire an entry.")
    max_experiences: int = Field(default=100_000, ge=1, description="Cap on stored episodes.")
    max_insights: int = Field(default=5_000, ge=1, description="Cap on stored insights.")
    max_patterns: int = Field(default=1_000, ge=1, description="Cap on stored patterns.")


class TeacherConfig(Config):
    """What the distillation teacher reads from memory. The agent sees every active insight and pattern (it has
    to use advice for the verifier to judge it); the teacher, whose answers become the student's weights, reads
    worked examples and only the advice the verifier has validated in use."""

    validated_advice_only: bool = Field(
        default=True, description="The teacher reads an insight or pattern only once validated: the episodes that "
        "used it passed more often than its suite's episodes, with confidence (min_uses, z). Operator-written "
        "advice is always read. False: the teacher reads all advice, as the agent does.")
    min_uses: int = Field(default=5, ge=1, description="Uses before advice can be validated for the teacher.")
    z: float = Field(default=1.0, ge=0.0, le=5.0,
                     description="Validated when the Wilson lower bound (z standard errors) of its pass rate in use "
                     "exceeds its suite's pass rate; 0 compares the plain rates.")


class MemoryConfig(Config):
    """All procedural-memory settings."""

    retrieval: RetrievalConfig = Field(default_factory=lambda: RetrievalConfig(), description="Retrieval.")
    reflection: ReflectionConfig = Field(default_factory=lambda: ReflectionConfig(), description="Reflection.")
    hygiene: HygieneConfig = Field(default_factory=lambda: HygieneConfig(), description="Hygiene.")
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig(),
                                   description="What the distillation teacher reads.")
