"""The experiment's typed config (``procmem eval --config eval/configs/NAME.toml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from procmem.agent.config import SessionJob
from procmem.distill.config import DistillConfig

__all__ = ["ARMS", "ARM_SPECS", "TRAINED_ARMS", "Arm", "ArmSpec", "EvalConfig", "TeacherMemory", "TrainsOn"]

Arm = Literal["base", "base+memory", "rft", "pmd", "pmd-frozen", "placebo"]
TrainsOn = Literal["nothing", "successes", "corrections"]
TeacherMemory = Literal["live", "frozen", "placebo"]


@dataclass(frozen=True)
class ArmSpec:
    """What one arm of the experiment does each round."""

    name: Arm
    trains_on: TrainsOn = "nothing"
    """``successes``: SFT on the agent's own verified answers (RFT); ``corrections``: the memory-conditioned
    teacher's verified corrections, with ``distill.objective``; ``nothing``: the base model is evaluated."""
    teacher_memory: TeacherMemory = "live"
    """Corrections only: the memory the teacher reads (as it stands now, as it stood after round 1, or the
    memory of an unrelated problem)."""
    memory_at_test: bool = False
    """Retrieved memory goes in the test prompts (and the general-ability holdout is not scored)."""
    starts_in_round: int = 1
    """The first round in which this arm trains and is scored. Before it the arm IS another arm and has no
    rows of its own: ``pmd-frozen`` reads the memory as it stood after round 1, which in round 1 is PMD's
    live memory, so its round-1 adapter is PMD's (never scored twice)."""

    @property
    def trains(self) -> bool:
        return self.trains_on != "nothing"


ARM_SPECS: dict[Arm, ArmSpec] = {spec.name: spec for spec in (
    ArmSpec("base"),
    ArmSpec("base+memory", memory_at_test=True),
    ArmSpec("rft", trains_on="successes"),
    ArmSpec("pmd", trains_on="corrections"),
    ArmSpec("pmd-frozen", trains_on="corrections", teacher_memory="frozen", starts_in_round=2),
    ArmSpec("placebo", trains_on="corrections", teacher_memory="placebo"),
)}
"""Every arm, in report order (see the README's *Evidence*)."""
ARMS: tuple[Arm, ...] = tuple(ARM_SPECS)
TRAINED_ARMS: tuple[Arm, ...] = tuple(name for name, spec in ARM_SPECS.items() if spec.trains)
"""Arms that train an adapter each round; the others only evaluate the base model."""


class EvalConfig(SessionJob):
    """One experiment: R rounds of collect -> reflect -> distill -> evaluate, for every arm and seed."""

    SESSION_KEYS: ClassVar[Mapping[str, str]] = {**SessionJob.SESSION_KEYS, "max_tokens": "generation.max_tokens"}
    SESSION_DEFAULTS: ClassVar[Mapping[str, Any]] = {"concurrency": 16, "generation": {"max_tokens": 16}}
    """The agent session of every arm (``[session]``; configs written before it keep ``model``, ``attempts``,
    ``memory_k``, ``max_tokens`` and ``concurrency`` at the top level): the base model, attempts per train task
    during collection, memory entries in agent and teacher prompts, the most new tokens per answer (agent, teacher
    and test; with answer_format 'reasoned' the task's own budget) and agent tasks at once. Its ``adapter`` is
    not used: each arm's policy is the adapter it trained."""

    train_suites: tuple[str, ...] = Field(min_length=1, description="Task suites trained on (their train split) and "
                                                                   "tested on (their held-out test split).")
    holdout_suites: tuple[str, ...] = Field(default=(), description="General-ability suites, never trained on: the "
                                                                   "forgetting check.")
    n_train: int = Field(default=32, ge=1, description="Train items per suite and seed collected each round, drawn "
                                                      "per seed from a pool of train_pool x n_train train-split "
                                                      "items.")
    train_pool: float = Field(default=2.0, ge=1.0, le=10.0, description="Size of the train pool each seed draws "
                                                                       "its n_train items from, in units of n_train.")
    n_dev: int = Field(default=40, ge=0, description="Dev items per suite: the first n_dev held-out items, used "
                                                     "only by eval/bench/calibrate.py (every choice), never scored "
                                                     "here.")
    n_test: int = Field(default=24, ge=1, description="Test items per suite and seed: seed number i (its position "
                                                      "in `seeds`) gets the i-th block of n_test held-out items "
                                                      "after the dev items, so seeds' test items are disjoint.")
    n_holdout: int = Field(default=16, ge=0, description="Items per holdout suite and seed (drawn like n_test).")
    answer_format: Literal["line", "reasoned"] = Field(
        default="line", description="'reasoned': the answer may be worked out over several lines, up to max_tokens, "
                                    "and is read from the line marked 'Answer:' (procmem.core.prompts); 'line': "
                                    "the first line is the answer. The same for every arm and stage.")
    train_examples: int = Field(default=0, ge=0, description="Matched budgets: every trained arm trains on exactly "
                                                             "this many examples per round (its verified traces "
                                                             "subsampled, or repeated in turn), so RFT and PMD take "
                                                             "the same number of optimizer steps; 0: each arm's "
                                                             "own count (unmatched).")
    n_uplift: int = Field(default=0, ge=0, description="Train items per suite on which, each round, the policy is "
                                                       "scored with memory (the teacher's view) and without (the "
                                                       "student's): the memory uplift. 0: not measured.")
    evaluate_every_round: bool = Field(default=False, description="Score the arms on the test items after every "
                                                                  "round; false: after the final round only.")
    rounds: int = Field(default=2, ge=1, le=20, description="Co-evolution rounds R.")
    seeds: tuple[int, ...] = Field(default=(0, 1, 2), min_length=1, description="Training/sampling seeds; CIs "
                                                                               "are bootstrapped over them.")
    arms: tuple[Arm, ...] = Field(default=ARMS, min_length=1, description="Arms to run (see README, Evidence).")
    reflect_max_calls: int = Field(default=64, ge=0, description="Reflection LLM calls per round (0: no reflection).")
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples for the 95% CIs.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Traces, LoRA and training settings "
                                   "shared by every trained arm; `objective` is PMD's (RFT always uses sft).")

    @model_validator(mode="after")
    def _distinct_suites(self) -> EvalConfig:
        overlap = set(self.train_suites) & set(self.holdout_suites)
        if overlap:
            raise ValueError(f"holdout suites must never be trained on; both lists hold {sorted(overlap)}")
        late = [a for a in self.arms if ARM_SPECS[a].starts_in_round > self.rounds]
        if late:
            raise ValueError(f"arm(s) {late} start in a later round than rounds={self.rounds}; raise rounds or "
                             "drop them from arms")
        if self.train_examples and self.distill.objective != "sft":
            raise ValueError(f"train_examples (matched budgets) needs distill.objective = 'sft', got "
                             f"{self.distill.objective!r}: its self-distill problems are extra examples RFT lacks")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        return self
