"""Benchmark: training throughput of distill's ``sft`` and ``self-distill`` paths on the bundled Gemma 3 270M.

``--objective sft`` (the default). In ONE process, on the same model, data (memory-free prompt -> verified
answer, as distill builds them) and LoRA config (``LoraSettings`` defaults: r=16 on all q/k/v/o/gate/up/down
projections):

1. **ours**: :class:`~procmem.distill.objectives.SftObjective`, the LM head applied only at completion
   positions (``completion_logits``);
2. **full logits**: the same loop, but logits at every position and the loss masked to the completion,
   which is what a trainer without that optimisation computes;
3. **TRL**: ``trl.SFTTrainer`` with ``completion_only_loss`` and the same ``peft`` LoRA config
   (gradient checkpointing off, as in ours; needs ``pip install -e ".[bench]"`` (trl), skipped otherwise);
4. ours again, to see drift on a shared machine (A-B-A).

ours and full logits alternate step by step, so load changes hit both alike. Throughput counts every
non-pad token a step runs over (prompt + completion), per optimizer step, warm-up steps excluded.

The FLOP limit is the measured fp32 GEMM rate ÷ (4 × parameters) tokens/s: a frozen-base LoRA step costs
~2N FLOPs per token forward plus ~2N for the activation gradients (no weight gradients for frozen
weights). It is given with N = all parameters (the issue's definition) and N = the parameters without
the tied 262k-token embedding, which our path only multiplies at completion positions.

``--objective self-distill``. On-policy distillation steps, in one process, on reasoned chain_sum problems
whose teacher prompt carries memory the way distill renders it (advice, three worked examples, the verifier's
feedback: ~10x the student prompt), the same LoRA, ``train.max_seq_len`` 1024, rollouts of at most
``--new-tokens`` (48) sampled by the student at temperature 1, reverse KL(student || teacher) over the full
vocabulary, teacher = the frozen base model:

1. **ours, memory teacher**: :class:`~procmem.distill.objectives.SelfDistillObjective` as distill runs it (the
   teacher scores the rollout after the memory-conditioned prompt);
2. **ours, equal inputs**: the same objective with the teacher given the student's own prompt and rollouts that
   end only at EOS or ``--new-tokens``, which is what GKD does;
3. **TRL GKD**: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=1`` (every step on the student's samples),
   ``beta=1`` (its generalized JSD is then KL(student || teacher), our divergence), the same temperature,
   ``max_new_tokens``, LoRA (dropout kept: ``disable_dropout=False``), batch and learning rate, and the base
   model as its ``teacher_model`` (a second model sharing the student's frozen base tensors), in a child
   process. GKD feeds the teacher the student's ``input_ids``: it has no separate teacher prompt, so the
   memory-conditioned teacher cannot be run through it; its ``generate`` gets no stop strings, so its rollouts
   run to ``max_new_tokens`` or EOS. **(2) vs (3) is the like-for-like comparison**; (1) does the real job: its
   teacher reads ~10x the student's prompt, and its rollouts end at the task's stop strings (a finished rollout
   leaves the sampling batch).

Throughput counts the tokens the student trains on per optimizer step (its prompt + its sampled completion,
non-pad), per CPU-second of the process that ran it; the peak RSS of each path is its resident-set high-water
mark, reset (``/proc/self/clear_refs``) before each step.

Run (the bundled model must be converted, ~40 s the first time)::

    .venv/bin/python eval/bench/bench_distill.py [--home DIR] [--steps 4] [--batch 8] [--json]
    .venv/bin/python eval/bench/bench_distill.py --objective self-distill --threads 1 [--steps 3] [--batch 8] [--json]

GKD holds every position's 262k logits for student and teacher: ~10 GB at batch 8; at batch 16 it needs more
than the ~13 GB the 24 GB machine had free beside another job (the kernel's OOM killer ended the run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from procmem.core import Home, PriorAttempt, render_completion, render_prompt
from procmem.core.prompts import REASONED_STOP
from procmem.distill import DistillConfig, Example
from procmem.distill.objectives import SelfDistillObjective, SftObjective
from procmem.distill.train import load_trainable_model

__all__ = ["BenchResult", "SelfDistillResult", "main", "run_bench", "run_self_distill_bench"]

_DATASET = ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2})
_console = Console(stderr=True)


@dataclass(frozen=True)
class Rate:
    """Tokens per second of wall time and per second of this process's CPU time (all threads)."""

    tokens: int
    wall_s: float
    cpu_s: float

    @property
    def per_wall_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.tokens / self.cpu_s

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.tokens + other.tokens, self.wall_s + other.wall_s, self.cpu_s + other.cpu_s)


_ZERO = Rate(0, 0.0, 0.0)


@dataclass
class BenchResult:
    """Throughput per path and the derived ratios."""

    model: str
    examples: int
    batch: int
    steps: int
    threads: int
    mean_tokens_per_example: float
    completion_fraction: float
    ours: Rate
    full_logits: Rate
    trl: Rate | None
    ours_again: Rate | None
    gemm_gflops_per_cpu_s: float
    params_total: int
    params_body: int

    def flop_limit_tokens_per_cpu_s(self, params: int) -> float:
        return self.gemm_gflops_per_cpu_s * 1e9 / (4 * params)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if not isinstance(v, Rate | None)}
        for name in ("ours", "full_logits", "trl", "ours_again"):
            rate = getattr(self, name)
            data[f"{name}_tokens_per_wall_s"] = rate.per_wall_s if rate else None
            data[f"{name}_tokens_per_cpu_s"] = rate.per_cpu_s if rate else None
        data["ratio_vs_full_logits_cpu"] = self.ours.per_cpu_s / self.full_logits.per_cpu_s
        data["ratio_vs_full_logits_wall"] = self.ours.per_wall_s / self.full_logits.per_wall_s
        data["ratio_vs_trl_cpu"] = self.ours.per_cpu_s / self.trl.per_cpu_s if self.trl else None
        data["ratio_vs_trl_wall"] = self.ours.per_wall_s / self.trl.per_wall_s if self.trl else None
        for label, params in (("all_params", self.params_total), ("body_params", self.params_body)):
            limit = self.flop_limit_tokens_per_cpu_s(params)
            data[f"flop_limit_tokens_per_cpu_s_{label}"] = limit
            data[f"fraction_of_flop_limit_{label}"] = self.ours.per_cpu_s / limit
        return data


def make_examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` distill-style SFT examples: the memory-free prompt and the verified (gold) answer."""
    import reasoning_gym

    name, config = _DATASET
    data = reasoning_gym.create_dataset(name, seed=seed, size=n, **config)
    return [Example(task_id=f"{name}-{i}", prompt=render_prompt(item["question"]), teacher_prompt="",
                    completion=render_completion(str(item["answer"]))) for i, item in enumerate(data)]


def gemm_gflops(seconds: float = 2.0) -> float:
    """The best fp32 matmul rate over shapes of the model's projections, in GFLOP per CPU-second.

    Per CPU-second (not wall) so that other processes on a shared machine do not lower it.
    """
    best = 0.0
    for m, k, n in ((512, 640, 2048), (512, 2048, 640), (1024, 640, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        count, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds / 3:
            torch.matmul(a, b)
            count += 1
        best = max(best, 2 * m * k * n * count / (time.process_time() - cpu) / 1e9)
    return best


class _FullLogitsSft(SftObjective):
    """The same loss with logits at every position (the unoptimised baseline)."""

    def loss(self, model: Any, batch: Any) -> Any:
        from procmem.distill.objectives import ObjectiveLoss

        packed = self._enc.pack([self._enc.ids(e.prompt, special=True) for e in batch],
                                [self._enc.ids(e.completion or "", special=False) for e in batch])
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask, use_cache=False).logits
        selected = logits[:, :-1][packed.predict_mask[:, :-1]]
        return ObjectiveLoss(F.cross_entropy(selected, packed.targets), int(packed.targets.numel()),
                             packed.processed_tokens)


def _timed_steps(model: Any, objective: SftObjective, batches: list[list[Example]], optimizer: Any) -> Rate:
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for batch in batches:
        out = objective.loss(model, batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += out.processed_tokens
    return Rate(tokens, time.perf_counter() - wall, time.process_time() - cpu)


def _batches(examples: list[Example], batch: int, count: int) -> list[list[Example]]:
    return [[examples[(i * batch + j) % len(examples)] for j in range(batch)] for i in range(count)]


def bench_ours(model_dir: Path, examples: list[Example], batch: int, steps: int, warmup: int,
               config: DistillConfig) -> tuple[Rate, Rate]:
    """(ours, full logits), alternating one step of each on the same model."""
    model, tokenizer = load_trainable_model(model_dir, config, None)
    model.train()
    paths = {"ours": SftObjective(tokenizer, 512), "full": _FullLogitsSft(tokenizer, 512)}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    totals = {"ours": _ZERO, "full": _ZERO}
    for index, chunk in enumerate(_batches(examples, batch, warmup + steps)):
        for name, objective in paths.items():
            rate = _timed_steps(model, objective, [chunk], optimizer)
            _log_step(name, index, rate)
            if index >= warmup:
                totals[name] = totals[name] + rate
    del model, optimizer
    gc.collect()
    return totals["ours"], totals["full"]


def bench_ours_only(model_dir: Path, examples: list[Example], batch: int, steps: int, warmup: int,
                    config: DistillConfig) -> Rate:
    model, tokenizer = load_trainable_model(model_dir, config, None)
    model.train()
    ours = SftObjective(tokenizer, 512)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    total = _ZERO
    for index, chunk in enumerate(_batches(examples, batch, warmup + steps)):
        rate = _timed_steps(model, ours, [chunk], optimizer)
        _log_step("ours", index, rate)
        if index >= warmup:
            total = total + rate
    del model, optimizer
    gc.collect()
    return total


def _log_step(name: str, index: int, rate: Rate) -> None:
    _console.print(f"  {name:4s} step {index}: {rate.tokens} tokens, {rate.wall_s:.2f} s wall, {rate.cpu_s:.2f} s CPU",
                   highlight=False)


def bench_trl(model_dir: Path, examples: list[Example], batch: int, steps: int, warmup: int,
              config: DistillConfig, work: Path) -> Rate | None:
    """TRL SFTTrainer tokens/s (non-pad tokens per optimizer step), or None when trl is not installed."""
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        _console.print("[yellow]trl is not installed: TRL comparison skipped (pip install -e '.[bench]')[/]")
        return None
    import datasets

    from procmem.llm import load_model_and_tokenizer

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    model, tokenizer = load_model_and_tokenizer(model_dir, trainable=True)
    tokenizer.padding_side = "right"
    lora = config.lora
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    rows = [{"prompt": e.prompt, "completion": e.completion or ""} for e in examples]
    args = SFTConfig(output_dir=str(work), per_device_train_batch_size=batch, max_steps=warmup + steps,
                     learning_rate=config.train.lr, lr_scheduler_type="constant", logging_steps=10_000,
                     save_strategy="no", report_to="none", completion_only_loss=True, max_length=512,
                     packing=False, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
                     pad_to_multiple_of=None, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    step_tokens: list[int] = []
    step_rates: list[Rate] = []

    class _Trainer(SFTTrainer):
        def training_step(self, model: Any, inputs: Any, *rest: Any, **kwargs: Any) -> Any:
            step_tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *rest, **kwargs)

    class _Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            rate = Rate(step_tokens[-1], time.perf_counter() - self.started[0], time.process_time() - self.started[1])
            step_rates.append(rate)
            _log_step("trl", len(step_rates) - 1, rate)

    trainer = _Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                       peft_config=peft_config, callbacks=[_Clock()])
    trainer.train()
    del trainer, model
    gc.collect()
    return sum(step_rates[warmup:], _ZERO)


def run_bench(home: Home, *, n: int = 64, batch: int = 8, steps: int = 4, warmup: int = 1,
              trl: bool = True, log: Callable[[str], None] = _console.print) -> BenchResult:
    """Measure every path in this process (see the module docstring)."""
    from transformers import AutoConfig, AutoTokenizer

    from procmem.llm import ensure_bundled_model

    model_dir = ensure_bundled_model(home.models)
    config = DistillConfig()
    examples = make_examples(n)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    completion = [len(tokenizer(e.completion or "", add_special_tokens=False)["input_ids"]) for e in examples]
    lengths = [len(tokenizer(e.prompt)["input_ids"]) + c for e, c in zip(examples, completion, strict=True)]
    log(f"GEMM rate, {torch.get_num_threads()} threads ...")
    gflops = gemm_gflops()
    log(f"ours vs full logits: {steps} steps of {batch} (+{warmup} warm-up) ...")
    ours, full = bench_ours(model_dir, examples, batch, steps, warmup, config)
    trl_rate = again = None
    if trl:
        log("TRL SFTTrainer ...")
        trl_rate = bench_trl(model_dir, examples, batch, steps, warmup, config, home.root / "bench-trl")
        log("ours again ...")
        again = bench_ours_only(model_dir, examples, batch, steps, warmup, config)
    text_config = AutoConfig.from_pretrained(model_dir)
    text_config = getattr(text_config, "text_config", text_config)
    total = _count_params(model_dir)
    return BenchResult(model=model_dir.name, examples=n, batch=batch, steps=steps, threads=torch.get_num_threads(),
                       mean_tokens_per_example=statistics.mean(lengths),
                       completion_fraction=sum(completion) / sum(lengths), ours=ours, full_logits=full,
                       trl=trl_rate, ours_again=again, gemm_gflops_per_cpu_s=gflops, params_total=total,
                       params_body=total - text_config.vocab_size * text_config.hidden_size)


# ---------------------------------------------------------------------------------------------- self-distill

_PATTERNS = ("In rg:chain_sum, a retry must change the answer: the same wrong answer was given again on 37 problems, "
             "and it never passed.",
             "In rg:chain_sum, give exactly the answer and nothing else: answers were only partly right on 4 problems "
             "(e.g. '15', the previous answer, '12').")


def make_problems(n: int, seed: int = 0) -> list[Example]:
    """``n`` self-distill problems (no completion): a reasoned chain_sum question as the student sees it, and the
    teacher's prompt with memory rendered as distill renders it (two suite patterns, a lesson on this problem,
    three worked examples) and the verifier's feedback on a failed attempt."""
    import reasoning_gym

    from procmem.memory._retrieval import Advice, MemoryContext, WorkedExample, render_memory

    name, config = _DATASET
    items = list(reasoning_gym.create_dataset(name, seed=seed, size=n, **config))
    patterns = tuple(Advice(id=f"pat{i}", kind="pattern", text=text) for i, text in enumerate(_PATTERNS))
    problems = []
    for i, item in enumerate(items):
        shown = [items[(i + k) % n] for k in (1, 2, 3)]
        examples = tuple(WorkedExample(id=f"ex{k}", question=e["question"], answer=str(e["answer"]))
                         for k, e in enumerate(shown))
        wrong = int(item["answer"]) + 1 + i % 3
        lesson = Advice(id=f"ins{i}", kind="lesson",
                        text=f"The answer '{wrong}' was wrong 2 times here: a retry must give a different answer.")
        memory = render_memory(MemoryContext(examples=examples, insights=(lesson,), patterns=patterns))
        feedback = [PriorAttempt(feedback="the previous answer is not the correct answer")]
        problems.append(Example(
            task_id=f"{name}-{i}", suite=f"rg:{name}", answer_format="reasoned", stop=REASONED_STOP,
            prompt=render_prompt(item["question"], answer_format="reasoned"),
            teacher_prompt=render_prompt(item["question"], memory=memory, prior=feedback, answer_format="reasoned")))
    return problems


def _reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (Linux; elsewhere the peak stays the process's)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the next path's peak starts from what is live."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class _PathStats:
    rate: Rate = _ZERO
    completion_tokens: int = 0
    peak_rss_mib: float = 0.0

    def add(self, rate: Rate, completion: int) -> None:
        self.rate = self.rate + rate
        self.completion_tokens += completion
        self.peak_rss_mib = max(self.peak_rss_mib, _peak_rss_mib())


@dataclass
class SelfDistillResult:
    """Throughput and peak memory of each self-distillation path, and the derived ratios."""

    model: str
    examples: int
    batch: int
    steps: int
    threads: int
    new_tokens: int
    teacher: str
    mean_student_prompt_tokens: float
    mean_teacher_prompt_tokens: float
    ours_memory: _PathStats
    ours_equal: _PathStats
    gkd: _PathStats | None
    gkd_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if not isinstance(v, _PathStats | None)}
        for name in ("ours_memory", "ours_equal", "gkd"):
            stats = getattr(self, name)
            data[f"{name}_tokens_per_cpu_s"] = stats.rate.per_cpu_s if stats else None
            data[f"{name}_tokens_per_wall_s"] = stats.rate.per_wall_s if stats else None
            data[f"{name}_cpu_s_per_step"] = stats.rate.cpu_s / self.steps if stats else None
            data[f"{name}_mean_completion_tokens"] = (stats.completion_tokens / (self.steps * self.batch)
                                                      if stats else None)
            data[f"{name}_peak_rss_mib"] = stats.peak_rss_mib if stats else None
        gkd = self.gkd.rate if self.gkd else None
        data["ratio_equal_vs_gkd_cpu"] = self.ours_equal.rate.per_cpu_s / gkd.per_cpu_s if gkd else None
        data["ratio_memory_vs_gkd_cpu"] = self.ours_memory.rate.per_cpu_s / gkd.per_cpu_s if gkd else None
        data["ratio_equal_vs_gkd_wall"] = self.ours_equal.rate.per_wall_s / gkd.per_wall_s if gkd else None
        return data


def bench_self_distill_ours(model_dir: Path, problems: list[Example], batch: int, steps: int, warmup: int,
                            config: DistillConfig) -> tuple[_PathStats, _PathStats]:
    """(memory teacher, equal inputs), alternating one step of each on the same model."""
    model, tokenizer = load_trainable_model(model_dir, config, None)
    model.train()
    objective = SelfDistillObjective(tokenizer, config.train.max_seq_len, config.self_distill)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    totals = {"memory": _PathStats(), "equal": _PathStats()}
    torch.manual_seed(config.train.seed)
    for index, chunk in enumerate(_batches(problems, batch, warmup + steps)):
        for name in totals:
            examples = chunk if name == "memory" else [replace(e, teacher_prompt=e.prompt, stop=()) for e in chunk]
            _reset_peak_rss()
            wall, cpu = time.perf_counter(), time.process_time()
            out = objective.loss(model, examples)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            objective.after_step(model)
            rate = Rate(out.processed_tokens, time.perf_counter() - wall, time.process_time() - cpu)
            _log_step(name[:4], index, rate)
            if index >= warmup:
                totals[name].add(rate, out.tokens)
    del model, optimizer
    _release_memory()
    return totals["memory"], totals["equal"]


def bench_gkd(model_dir: Path, problems: list[Example], batch: int, steps: int, warmup: int,
              config: DistillConfig, work: Path) -> _PathStats | None:
    """TRL ``GKDTrainer`` (see the module docstring), or None when trl is not installed."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        _console.print("[yellow]trl is not installed: GKD comparison skipped (pip install -e '.[bench]')[/]")
        return None
    import datasets

    from procmem.llm import load_model_and_tokenizer

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(config.train.seed)
    model, tokenizer = load_model_and_tokenizer(model_dir, trainable=True)
    teacher, _ = load_model_and_tokenizer(model_dir)
    student_weights = dict(model.named_parameters())
    for name, param in teacher.named_parameters():  # the same frozen base: share its tensors, not a second 1 GB copy
        param.data = student_weights[name].data
    lora = config.lora
    peft_config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    # Pre-tokenised exactly as ours (special tokens on); no completion: lmbda=1 samples every step's completions.
    rows = []
    for e in problems:
        ids = list(tokenizer(e.prompt)["input_ids"])
        rows.append({"prompt": e.prompt, "input_ids": ids, "completion_mask": [0] * len(ids)})
    settings = config.self_distill
    args = GKDConfig(output_dir=str(work), per_device_train_batch_size=batch, max_steps=warmup + steps,
                     learning_rate=config.train.lr, lr_scheduler_type="constant", logging_steps=10_000,
                     save_strategy="no", report_to="none", max_length=config.train.max_seq_len,
                     gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, dataloader_num_workers=0,
                     disable_tqdm=True, seed=config.train.seed, lmbda=1.0, beta=1.0,
                     temperature=settings.rollout_temperature, max_new_tokens=settings.max_new_tokens,
                     disable_dropout=False)
    counts: list[tuple[int, int]] = []
    stats = _PathStats()

    class _Trainer(GKDTrainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            counts.append((int(inputs["attention_mask"].sum()), int((inputs["labels"] != -100).sum())))
            # The Trainer counts num_items_in_batch on the dataset's labels, before sampling: 0 for prompt-only rows
            # (a 0/0 loss). Without it GKD averages over the sampled tokens, as ours does.
            return super().compute_loss(model, inputs, return_outputs=return_outputs)

    class _Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            _reset_peak_rss()
            self.started = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            tokens, completion = counts[-1]
            rate = Rate(tokens, time.perf_counter() - self.started[0], time.process_time() - self.started[1])
            _log_step("gkd", len(counts) - 1, rate)
            if len(counts) > warmup:
                stats.add(rate, completion)

    trainer = _Trainer(model=model, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=tokenizer, peft_config=peft_config, callbacks=[_Clock()])
    trainer.train()
    del trainer, model, teacher
    _release_memory()
    return stats


def run_self_distill_bench(home: Home, *, n: int = 64, batch: int = 8, steps: int = 3, warmup: int = 1,
                           new_tokens: int = 48, trl: bool = True,
                           log: Callable[[str], None] = _console.print) -> SelfDistillResult:
    """Measure every self-distillation path in this process (see the module docstring)."""
    from transformers import AutoTokenizer

    from procmem.llm import ensure_bundled_model

    model_dir = ensure_bundled_model(home.models)
    config = DistillConfig.model_validate({
        "objective": "self-distill", "train": {"batch_size": batch, "max_seq_len": 1024, "lr": 3e-4},
        "self_distill": {"teacher": "base", "divergence": "reverse_kl", "max_new_tokens": new_tokens}})
    problems = make_problems(n)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    student = [len(tokenizer(e.prompt)["input_ids"]) for e in problems]
    teacher = [len(tokenizer(e.teacher_prompt)["input_ids"]) for e in problems]
    gkd, gkd_error = None, None
    if trl:
        log("TRL GKDTrainer first, in a child process (its memory use must not end the run) ...")
        gkd, gkd_error = _gkd_isolated(model_dir, problems, batch, steps, warmup, config, home.root / "bench-gkd")
        if gkd_error:
            log(f"[red]GKD: {gkd_error}[/]")
    log(f"ours (memory teacher, equal inputs): {steps} steps of {batch} (+{warmup} warm-up) ...")
    memory, equal = bench_self_distill_ours(model_dir, problems, batch, steps, warmup, config)
    return SelfDistillResult(model=model_dir.name, examples=n, batch=batch, steps=steps,
                             threads=torch.get_num_threads(), new_tokens=new_tokens, teacher="base",
                             mean_student_prompt_tokens=statistics.mean(student),
                             mean_teacher_prompt_tokens=statistics.mean(teacher), ours_memory=memory,
                             ours_equal=equal, gkd=gkd, gkd_error=gkd_error)


def _gkd_in_child(threads: int, *args: Any) -> dict[str, Any] | None:
    torch.set_num_threads(threads)
    stats = bench_gkd(*args)
    return None if stats is None else {"tokens": stats.rate.tokens, "wall_s": stats.rate.wall_s,
                                       "cpu_s": stats.rate.cpu_s, "completion_tokens": stats.completion_tokens,
                                       "peak_rss_mib": stats.peak_rss_mib}


def _gkd_isolated(*args: Any) -> tuple[_PathStats | None, str | None]:
    """:func:`bench_gkd` in a spawned process (its CPU time and peak RSS are its own): (stats, None), or (None, why)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            out = pool.submit(_gkd_in_child, torch.get_num_threads(), *args).result()
        except BrokenProcessPool:
            return None, "its process died (killed by the kernel: out of memory?)"
    if out is None:
        return None, "trl is not installed"
    return _PathStats(Rate(out["tokens"], out["wall_s"], out["cpu_s"]), out["completion_tokens"],
                      out["peak_rss_mib"]), None


def _self_distill_table(result: SelfDistillResult) -> Table:
    table = Table(title=f"self-distill training throughput on {result.model}: {result.threads} thread(s), batch "
                        f"{result.batch}, prompts {result.mean_student_prompt_tokens:.0f} (student) / "
                        f"{result.mean_teacher_prompt_tokens:.0f} (teacher) tokens, <= {result.new_tokens} new")
    for column in ("path", "tokens / CPU-s", "equal ÷ path (CPU)", "CPU-s / step", "completion tokens",
                   "tokens / wall-s", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "path" else "right")
    equal = result.ours_equal.rate
    for label, stats in (("ours, memory teacher", result.ours_memory), ("ours, equal inputs", result.ours_equal),
                         ("TRL GKDTrainer", result.gkd)):
        if stats is not None:
            rate = stats.rate
            table.add_row(label, f"{rate.per_cpu_s:.1f}", f"{equal.per_cpu_s / rate.per_cpu_s:.2f}",
                          f"{rate.cpu_s / result.steps:.1f}",
                          f"{stats.completion_tokens / (result.steps * result.batch):.1f}",
                          f"{rate.per_wall_s:.1f}", f"{stats.peak_rss_mib:.0f}")
    return table


def _count_params(model_dir: Path) -> int:
    """Parameters stored in the model's safetensors files (the tied embedding counted once)."""
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(int(size) for size in handle.get_slice(key).get_shape())
    return total


def _table(result: BenchResult) -> Table:
    table = Table(title=f"distill sft training throughput on {result.model}: {result.threads} thread(s), batch "
                        f"{result.batch}, {result.mean_tokens_per_example:.0f} tokens/example, "
                        f"{result.completion_fraction:.0%} of them completion")
    for column in ("path", "tokens / CPU-s", "ours ÷ path (CPU)", "tokens / wall-s", "ours ÷ path (wall)"):
        table.add_column(column, justify="left" if column == "path" else "right")
    ours = result.ours
    for label, rate in (("ours (completion-only logits)", ours), ("full logits, same loop", result.full_logits),
                        ("TRL SFTTrainer", result.trl), ("ours, again after TRL", result.ours_again)):
        if rate is not None:
            table.add_row(label, f"{rate.per_cpu_s:.1f}", f"{ours.per_cpu_s / rate.per_cpu_s:.2f}",
                          f"{rate.per_wall_s:.1f}", f"{ours.per_wall_s / rate.per_wall_s:.2f}")
    for label, params in (("FLOP limit, N = all params", result.params_total),
                          ("FLOP limit, N = non-embedding params", result.params_body)):
        limit = result.flop_limit_tokens_per_cpu_s(params)
        table.add_row(f"{label} ({params / 1e6:.0f}M)", f"{limit:.1f}", f"{ours.per_cpu_s / limit:.2f}", "", "")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="procmem home holding the converted bundled model (default: $PROCMEM_HOME)")
    parser.add_argument("--objective", choices=("sft", "self-distill"), default="sft", help="which training path")
    parser.add_argument("--n", type=int, default=64, help="examples in the dataset")
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    parser.add_argument("--steps", type=int, help="measured steps per path (default: 4 sft, 3 self-distill)")
    parser.add_argument("--new-tokens", type=int, default=48, help="self-distill: most tokens per rollout")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison (SFTTrainer / GKDTrainer)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    home = Home.resolve(args.home).ensure()
    result: BenchResult | SelfDistillResult
    if args.objective == "self-distill":
        result = run_self_distill_bench(home, n=args.n, batch=args.batch, steps=args.steps or 3,
                                        warmup=args.warmup, new_tokens=args.new_tokens, trl=not args.no_trl)
        Console(width=max(Console().width, 130)).print(_self_distill_table(result))
    else:
        result = run_bench(home, n=args.n, batch=args.batch, steps=args.steps or 4, warmup=args.warmup,
                           trl=not args.no_trl)
        Console(width=max(Console().width, 130)).print(_table(result))
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
