"""The experiment's typed config (``procmem eval --config eval/configs/NAME.toml``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from procmem.agent.config import SessionJob
from procmem.distill.config import DistillConfig
from procmem.memory.config import MemoryConfig

__all__ = ["ARMS", "ARM_SPECS", "PAPER_ARMS", "TRAINED_ARMS", "Arm", "ArmSpec", "EvalConfig", "Learns", "MemoryTrack",
           "Recipe"]

Arm = Literal["base", "base+memory", "rft", "sdpo", "pmd", "pmd-frozen-memory", "pmd-frozen-policy",
              "pmd-no-reflection", "pmd-sft", "pmd-mixed", "pmd-self-distill"]
Recipe = Literal["sft", "mixed", "self-distill"]
Learns = Literal["nothing", "own-successes", "own-feedback", "memory"]
MemoryTrack = Literal["none", "own", "own-unreflected", "frozen", "base"]


@dataclass(frozen=True)
class ArmSpec:
    """What one arm of the experiment does each round (see the module docstring of ``eval/experiment.py``)."""

    name: Arm
    learns: Learns = "nothing"
    """``own-successes``: SFT on its own verified answers (RFT); ``own-feedback``: self-distillation whose teacher
    reads only the episode's own failed attempt and feedback (SDPO); ``memory``: PMD, the memory-conditioned
    teacher with ``recipe``; ``nothing``: the base model is evaluated."""
    memory: MemoryTrack = "none"
    """The memory its policy collects with and its teacher reads: ``none`` (episode-local); ``own`` (its own
    memory, recorded and reflected each round: policy and memory co-evolve); ``own-unreflected`` (its own,
    recorded, never reflected: experiences and verifier lessons only); ``frozen`` (the memory as it stood after
    round 1, never written again); ``base`` (the memory the base policy collects and reflects each round, never
    written by the trained policy)."""
    recipe: Recipe | None = None
    """PMD's training recipe; None: the config's ``pmd_recipe``."""
    memory_at_test: bool = False
    """Retrieved memory goes in the test prompts (and the general-ability holdout is not scored)."""
    starts_in_round: int = 1
    """The first round in which this arm trains and is scored. Before it the arm IS ``pmd`` and has no rows of
    its own: in round 1 the frozen memory and the base policy's memory are PMD's, so the round-1 adapters of
    ``pmd-frozen-memory`` and ``pmd-frozen-policy`` are PMD's (never scored twice)."""

    @property
    def trains(self) -> bool:
        return self.learns != "nothing"


ARM_SPECS: dict[Arm, ArmSpec] = {spec.name: spec for spec in (
    ArmSpec("base"),
    ArmSpec("base+memory", memory="own", memory_at_test=True),
    ArmSpec("rft", learns="own-successes"),
    ArmSpec("sdpo", learns="own-feedback"),
    ArmSpec("pmd", learns="memory", memory="own"),
    ArmSpec("pmd-frozen-memory", learns="memory", memory="frozen", starts_in_round=2),
    ArmSpec("pmd-frozen-policy", learns="memory", memory="base", starts_in_round=2),
    ArmSpec("pmd-no-reflection", learns="memory", memory="own-unreflected"),
    ArmSpec("pmd-sft", learns="memory", memory="own", recipe="sft"),
    ArmSpec("pmd-mixed", learns="memory", memory="own", recipe="mixed"),
    ArmSpec("pmd-self-distill", learns="memory", memory="own", recipe="self-distill"),
)}
"""Every arm, in report order (see the README's *Evidence*). ``pmd-sft``, ``pmd-mixed`` and ``pmd-self-distill``
are PMD with a fixed recipe: the dev run that picks ``pmd_recipe`` compares them."""
ARMS: tuple[Arm, ...] = tuple(ARM_SPECS)
TRAINED_ARMS: tuple[Arm, ...] = tuple(name for name, spec in ARM_SPECS.items() if spec.trains)
"""Arms that train an adapter each round; the others only evaluate the base model."""
PAPER_ARMS: tuple[Arm, ...] = ("base", "base+memory", "rft", "sdpo", "pmd", "pmd-frozen-memory", "pmd-frozen-policy",
                               "pmd-no-reflection")
"""The arms of the paper's comparison (the default)."""


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
    n_train: int = Field(default=32, ge=1, description="Train items per suite and seed, drawn per seed from a pool "
                                                      "of train_pool x n_train train-split items. Collected every "
                                                      "round, or split into one block per round with "
                                                      "new_items_each_round.")
    new_items_each_round: bool = Field(default=False, description="Each round collects a fresh block of the train "
                                                                  "items (n_train / rounds per suite), as RL takes new "
                                                                  "prompts each iteration; memory carries what earlier "
                                                                  "rounds taught to new problems. False: every round "
                                                                  "collects all n_train items.")
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
                                                             "this many examples per round (SFT traces, or problems "
                                                             "a self-distillation rollout is sampled for; half each "
                                                             "for mixed), subsampled or repeated in turn, so every "
                                                             "arm takes the same optimizer steps; 0: each arm's own "
                                                             "count (unmatched).")
    pmd_recipe: Recipe = Field(default="self-distill", description="How PMD (and its ablations) learns from the "
                               "memory-conditioned teacher: 'self-distill' (token-level distillation on the student's "
                               "own rollouts), 'sft' (on memory-guided verified traces: its own successes and the "
                               "teacher's corrections) or 'mixed' (both). Picked on the dev split (score_on = 'dev').")
    score_on: Literal["test", "dev"] = Field(default="test", description="Items the arms are scored on: each seed's "
                                             "test block, or the dev items (the run that makes choices, such as "
                                             "pmd_recipe; never the test items).")
    n_uplift: int = Field(default=0, ge=0, description="Train items per suite on which, each round, the policy is "
                                                       "scored with memory (the teacher's view) and without (the "
                                                       "student's): the memory uplift. 0: not measured.")
    evaluate_every_round: bool = Field(default=False, description="Score the arms on the test items after every "
                                                                  "round; false: after the final round only.")
    rounds: int = Field(default=2, ge=1, le=20, description="Co-evolution rounds R.")
    seeds: tuple[int, ...] = Field(default=(0, 1, 2), min_length=1, description="Training/sampling seeds; CIs "
                                                                               "are bootstrapped over them.")
    arms: tuple[Arm, ...] = Field(default=PAPER_ARMS, min_length=1, description="Arms to run (see README, "
                                                                                   "Evidence).")
    reflect_max_calls: int = Field(default=64, ge=0, description="Reflection LLM calls per round (0: no reflection).")
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples for the 95% CIs.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Traces, LoRA, self-distillation and "
                                   "training settings shared by every trained arm. Its `objective` is not read: rft "
                                   "trains with sft, sdpo with self-distill, PMD arms with pmd_recipe.")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="Settings of every memory the experiment "
                                 "opens (the PMD arms' tracks); `[memory.teacher]` says which advice PMD's teachers "
                                 "read (default: only what the verifier validated in use).")

    @model_validator(mode="after")
    def _distinct_suites(self) -> EvalConfig:
        overlap = set(self.train_suites) & set(self.holdout_suites)
        if overlap:
            raise ValueError(f"holdout suites must never be trained on; both lists hold {sorted(overlap)}")
        late = [a for a in self.arms if ARM_SPECS[a].starts_in_round > self.rounds]
        if late:
            raise ValueError(f"arm(s) {late} start in a later round than rounds={self.rounds}; raise rounds or "
                             "drop them from arms")
        needs_pmd = [a for a in self.arms if ARM_SPECS[a].memory_at_test or ARM_SPECS[a].starts_in_round > 1]
        if needs_pmd and "pmd" not in self.arms:
            raise ValueError(f"arm(s) {needs_pmd} build on pmd (its memory, or its round-1 adapter); add 'pmd' to arms")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        return self
