"""The distillation job's typed config: ``procmem distill --config FILE.toml``, one TOML table per section
(``[traces]``, ``[lora]``, ``[train]``, ``[self_distill]``, ``[mixed]``, ``[gate]``); flags win over the file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from procmem.core.config import Config

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "REPLAY_SUITES",
    "DistillConfig",
    "GateConfig",
    "LoraSettings",
    "MixedSettings",
    "ObjectiveName",
    "ReplaySettings",
    "SelfDistillSettings",
    "TraceConfig",
    "TrainSettings",
]

ObjectiveName = Literal["sft", "self-distill", "mixed"]
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


REPLAY_SUITES = ("rg:spell_backward", "rg:ransom_note", "rg:isomorphic_strings", "rg:word_sequence_reversal",
                 "rg:caesar_cipher", "rg:basic_arithmetic")
"""Questions of other kinds whose answers take other forms (a word, True/False, a list, a sentence, a number)."""


class ReplaySettings(Config):
    """Rehearsal against forgetting: SFT examples of the policy's own answers to questions of other kinds."""

    share: float = Field(default=0.5, ge=0.0, lt=1.0,
                         description="Share of the SFT examples that are the parent policy's own greedy answers, "
                                     "memory-free and unverified, to questions from `suites`: the student keeps "
                                     "answering other kinds of question as it did. Without it, the README's loop "
                                     "(87 letter-counting traces, 44 steps) turned every syllogism answer into a "
                                     "digit (syllogism 76.7% -> 0%); 0.25 still did; 0.5 kept it (80.0%) with the "
                                     "same letter-counting gain (55% -> 75%), at twice the training steps. 0 turns "
                                     "rehearsal off.")
    suites: tuple[str, ...] = Field(default=REPLAY_SUITES,
                                    description="Suites the rehearsal questions come from (train split). Suites the "
                                                "run trains on and the gate's holdout suites are left out, so the "
                                                "gate's forgetting check stays a check.")
    max_tokens: int = Field(default=48, ge=1, le=2048, description="Most new tokens per rehearsal answer.")


class TraceConfig(Config):
    """How the teacher (base model + current adapter, with memory and feedback) writes corrected traces."""

    k: int = Field(default=4, ge=1, le=64, description="Candidates the teacher samples per problem.")
    temperature: float = Field(default=0.8, ge=0.0, le=5.0, description="Teacher sampling temperature (0: greedy).")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Teacher nucleus sampling mass.")
    max_tokens: int = Field(default=48, ge=1, le=2048, description="Most new tokens per teacher candidate.")
    memory_k: int = Field(default=3, ge=0, le=32,
                          description="Memory entries the retriever puts in the teacher prompt.")
    max_feedback: int = Field(default=2, ge=0, le=16, description="Most verifier feedback lines from failed attempts.")
    max_problems: int = Field(default=256, ge=1,
                              description="Most problems per run (failed ones are taken first).")
    include_successes: bool = Field(default=True,
                                    description="Also build traces for problems that were already solved.")
    keep_per_problem: int = Field(default=2, ge=1, le=64,
                                  description="Most distinct verified answers kept per problem.")
    seed: int = Field(default=0, description="Sampling seed of the teacher.")
    canonical_answers: bool = Field(default=True,
                                    description="Train on each verified answer in the canonical form its task's "
                                                "verifier read it as (a `numeric:` verifier that accepted `57.` "
                                                "trains `57`; for a reasoned task only the part after `Answer:`); "
                                                "false trains the raw text. Verifiers without a canonical form "
                                                "(regex, math, code) always keep the raw text.")
    replay: ReplaySettings = Field(default_factory=ReplaySettings,
                                   description="Rehearsal examples mixed into SFT training against forgetting.")


class LoraSettings(Config):
    """The LoRA adapter trained on the base model (peft ``LoraConfig``)."""

    rank: int = Field(default=16, ge=1, le=1024, description="LoRA rank r.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha (the update is scaled by alpha / rank).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(default=DEFAULT_TARGET_MODULES, min_length=1,
                                            description="Names of the linear layers that get LoRA matrices.")
    init_from_parent: bool = Field(default=True,
                                   description="Continue from the parent (promoted) adapter when there is one; its "
                                               "LoRA shape then wins over rank/alpha/targets.")


class TrainSettings(Config):
    """The optimisation loop."""

    lr: float = Field(default=2e-4, gt=0.0, le=1.0, description="AdamW peak learning rate.")
    epochs: int = Field(default=2, ge=1, le=1000, description="Passes over the training examples.")
    batch_size: int = Field(default=4, ge=1, le=1024, description="Examples per optimizer step: the global "
                            "batch (under `accelerate launch`, each of N processes trains on batch_size / N of them).")
    max_seq_len: int = Field(default=1024, ge=8, le=32768,
                             description="Longest prompt+completion in tokens; longer examples lose the head of their "
                                         "prompt. Self-distill teacher prompts carry the memory, so keep room for it.")
    seed: int = Field(default=0, description="Seed of data order, LoRA init, dropout and rollout sampling.")
    checkpoint_every: int = Field(default=20, ge=1, description="Write a resumable checkpoint every this many steps.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear learning-rate warm-up steps (then linear decay).")
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="Gradient clipping norm.")
    threads: int | None = Field(default=None, ge=1,
                                description="CPU threads of the whole `procmem distill` job (teacher, training, "
                                            "gate), shared by its processes under --processes N. None: half the "
                                            "usable cores (at least 1), leaving the rest to a `procmem serve` on "
                                            "the same machine.")
    nice: int = Field(default=10, ge=0, le=19,
                      description="Niceness `procmem distill` runs at (os.nice raises its own process to it "
                                  "before it works), so a `procmem serve` on the same machine keeps answering "
                                  "while it trains: the kernel gives serve the CPU first. 0 leaves the priority "
                                  "alone.")


class SelfDistillSettings(Config):
    """Token-level self-distillation (teacher: the model with memory in context; student: without)."""

    teacher: Literal["base", "ema"] = Field(default="base", description="'base': the frozen base model (adapter "
                                                                "disabled); 'ema': an EMA of the adapter.")
    ema_decay: float = Field(default=0.99, ge=0.0, lt=1.0, description="EMA decay per step (teacher='ema' only).")
    divergence: Literal["reverse_kl", "jsd"] = Field(default=
        "reverse_kl", description="'reverse_kl': KL(student || teacher) over the full vocabulary; 'jsd': "
                                  "Jensen-Shannon over the teacher's top-k tokens plus one tail bucket.")
    top_k: int = Field(default=64, ge=1, le=4096, description="Tokens kept by divergence='jsd'.")
    rollout_temperature: float = Field(default=1.0, gt=0.0, le=5.0, description="Student sampling temperature.")
    rollout_top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Student nucleus sampling mass.")
    max_new_tokens: int = Field(default=32, ge=1, le=2048, description="Most tokens per student rollout.")


class MixedSettings(Config):
    """``mixed``: loss = sft_weight * sft + self_distill_weight * self-distill."""

    sft_weight: float = Field(default=1.0, ge=0.0, description="Weight of the SFT loss.")
    self_distill_weight: float = Field(default=1.0, ge=0.0, description="Weight of the self-distillation loss.")


class GateConfig(Config):
    """The promotion gate: memory-free, greedy, same items and seed for candidate and baseline; paired tests."""

    test_suites: tuple[str, ...] = Field(default=(), description="Suites whose test split is evaluated; empty: the "
                                         "suites of the training episodes, each on its own test split, or, for a "
                                         "suite without one (`serve`: the calls of `procmem serve`), on its "
                                         "held-out verified episodes (see heldout_share).")
    n_test: int = Field(default=100, ge=1, description="Test items per suite (see the power note in "
                                                       "docs/concepts/distillation.md: 40 items cannot show a "
                                                       "10-point gain at level 0.05); for held-out episodes, the "
                                                       "newest this many.")
    heldout_share: float = Field(default=0.2, ge=0.0, lt=1.0,
                                 description="With no test_suites, for a trained suite without a test split (such "
                                             "as `serve`): the share of its verified questions held out of "
                                             "training and re-asked by the gate, memory-free, with each episode's "
                                             "own verifier. A hash of the question text decides, so a question is "
                                             "held out on every run or never. Episodes judged wrong without a "
                                             "correction (verifier `regex:(?!)`) cannot be re-scored and are never "
                                             "held out. 0: hold nothing out (such a suite cannot be gated).")
    min_heldout: int = Field(default=20, ge=1,
                             description="Fewest held-out episodes the gate needs per such suite (at most "
                                         "n_test, the most it re-asks). With fewer, "
                                         "`distill` refuses before building traces or training (status "
                                         "`skipped`, the reason names the count) and promotes nothing; the next "
                                         "run, after more verified traffic, tries again.")
    holdout_suites: tuple[str, ...] = Field(default=
        ("rg:letter_counting?min_words=1&max_words=3", "rg:syllogism"),
        description="General-ability holdout: suites never trained on (ones seen in training are skipped).")
    n_holdout: int = Field(default=20, ge=0, description="Items per holdout suite (0 disables the holdout).")
    min_improvement: float = Field(default=0.01, ge=0.0, le=1.0,
                                   description="Test accuracy must rise by at least this (besides being "
                                               "significant at `level`).")
    level: float = Field(default=0.05, gt=0.0, le=1.0,
                         description="Significance level of the paired tests (McNemar's exact test, one-sided, "
                                     "on the items where the two models disagree): promote only when the test "
                                     "gain has p <= level; refuse when the holdout drop has p <= level. 1.0 "
                                     "turns the tests off (the point estimates alone decide).")
    max_holdout_drop: float = Field(default=0.05, ge=0.0, le=1.0,
                                    description="Holdout accuracy may fall by at most this (and not significantly "
                                                "at `level`).")
    max_tokens: int = Field(default=32, ge=1, le=2048, description="Most new tokens per evaluated answer.")
    seed: int = Field(default=0, description="Generation seed (decoding is greedy).")


class DistillConfig(Config):
    """``procmem distill``: collect episodes, build corrected traces, train, gate, register, promote."""

    model: str = Field(default="local:default", description="Base model: 'local:default', 'local:tiny' or "
                                                    "'local:/path/to/hf_dir'.")
    parent: str = Field(default="promoted", description="Adapter the teacher runs with and training starts from: "
                                                "'promoted', 'none' or 'vN'.")
    objective: ObjectiveName = Field(default="sft", description="Training objective: sft, self-distill or mixed.")
    min_new_episodes: int = Field(default=1, ge=0,
                                  description="Skip the run unless this many episodes arrived since the last "
                                              "successful run.")
    min_traces: int = Field(default=1, ge=0, description="Skip training when fewer verified traces were built "
                                                 "(sft and mixed).")
    traces: TraceConfig = Field(default_factory=TraceConfig, description="Corrected-trace generation.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapter shape.")
    train: TrainSettings = Field(default_factory=TrainSettings, description="Optimisation loop.")
    self_distill: SelfDistillSettings = Field(default_factory=SelfDistillSettings,
                                              description="Self-distillation settings.")
    mixed: MixedSettings = Field(default_factory=MixedSettings, description="Weights of the mixed objective.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate.")

    @model_validator(mode="after")
    def _mixed_needs_weight(self) -> DistillConfig:
        if self.objective == "mixed" and self.mixed.sft_weight + self.mixed.self_distill_weight <= 0:
            raise ValueError("mixed objective needs a positive weight")
        return self
