"""The experiment's typed config (``procmem eval --config eval/configs/NAME.toml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from procmem.core.config import Config
from procmem.distill.config import DistillConfig

__all__ = ["ARMS", "TRAINED_ARMS", "Arm", "EvalConfig"]

Arm = Literal["base", "base+memory", "rft", "pmd", "pmd-frozen", "placebo"]
ARMS: tuple[Arm, ...] = ("base", "base+memory", "rft", "pmd", "pmd-frozen", "placebo")
TRAINED_ARMS: tuple[Arm, ...] = ("rft", "pmd", "pmd-frozen", "placebo")
"""Arms that train an adapter each round; the others only evaluate the base model."""


class EvalConfig(Config):
    """One experiment: R rounds of collect -> reflect -> distill -> evaluate, for every arm and seed."""

    model: str = Field(default="local:default", description="Base model: 'local:default', 'local:tiny' or "
                                                            "'local:/path/to/hf_dir'.")
    train_suites: tuple[str, ...] = Field(min_length=1, description="Task suites trained on (their train split) and "
                                                                   "tested on (their held-out test split).")
    holdout_suites: tuple[str, ...] = Field(default=(), description="General-ability suites, never trained on: the "
                                                                   "forgetting check.")
    n_train: int = Field(default=32, ge=1, description="Train items per suite collected each round.")
    n_test: int = Field(default=24, ge=1, description="Held-out test items per suite.")
    n_holdout: int = Field(default=16, ge=0, description="Items per holdout suite.")
    rounds: int = Field(default=2, ge=1, le=20, description="Co-evolution rounds R.")
    seeds: tuple[int, ...] = Field(default=(0, 1, 2), min_length=1, description="Training/sampling seeds; CIs "
                                                                               "are bootstrapped over them.")
    arms: tuple[Arm, ...] = Field(default=ARMS, min_length=1, description="Arms to run (see README, Evidence).")
    attempts: int = Field(default=2, ge=1, le=10, description="Agent attempts per train task during collection.")
    memory_k: int = Field(default=3, ge=0, le=32, description="Memory entries in agent and teacher prompts.")
    max_tokens: int = Field(default=16, ge=1, le=2048, description="Most new tokens per answer (agent and eval).")
    concurrency: int = Field(default=16, ge=1, le=256, description="Agent tasks at once; the model batches them.")
    reflect_max_calls: int = Field(default=64, ge=0, description="Reflection LLM calls per round (0: no reflection).")
    bootstrap: int = Field(default=2000, ge=100, description="Bootstrap resamples for the 95% CIs.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Traces, LoRA and training settings "
                                   "shared by every trained arm; `objective` is PMD's (RFT always uses sft).")

    @model_validator(mode="after")
    def _distinct_suites(self) -> EvalConfig:
        overlap = set(self.train_suites) & set(self.holdout_suites)
        if overlap:
            raise ValueError(f"holdout suites must never be trained on; both lists hold {sorted(overlap)}")
        return self
