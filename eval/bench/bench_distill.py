"""Benchmark: training throughput of distill's ``sft`` path on the bundled Gemma 3 270M.

In ONE process, on the same model, data (memory-free prompt -> verified answer, as distill builds them)
and LoRA config (``LoraSettings`` defaults: r=16 on all q/k/v/o/gate/up/down projections):

1. **ours**: :class:`~procmem.distill.objectives.SftObjective`, the LM head applied only at completion
   positions (``completion_logits``);
2. **full logits**: the same loop, but logits at every position and the loss masked to the completion,
   which is what a trainer without that optimisation computes;
3. **TRL**: ``trl.SFTTrainer`` with ``completion_only_loss`` and the same ``peft`` LoRA config
   (gradient checkpointing off, as in ours; needs ``pip install trl``, skipped otherwise);
4. ours again, to see drift on a shared machine (A-B-A).

ours and full logits alternate step by step, so load changes hit both alike. Throughput counts every
non-pad token a step runs over (prompt + completion), per optimizer step, warm-up steps excluded.

The FLOP limit is the measured fp32 GEMM rate ÷ (4 × parameters) tokens/s: a frozen-base LoRA step costs
~2N FLOPs per token forward plus ~2N for the activation gradients (no weight gradients for frozen
weights). It is given with N = all parameters (the issue's definition) and N = the parameters without
the tied 262k-token embedding, which our path only multiplies at completion positions.

Run (the bundled model must be converted, ~40 s the first time)::

    .venv/bin/python eval/bench/bench_distill.py [--home DIR] [--steps 4] [--batch 8] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from procmem.core import Home, render_completion, render_prompt
from procmem.distill import DistillConfig, Example
from procmem.distill.objectives import SftObjective
from procmem.distill.train import load_trainable_model

__all__ = ["BenchResult", "main", "run_bench"]

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
        _console.print("[yellow]trl is not installed: TRL comparison skipped (pip install trl)[/]")
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
    parser.add_argument("--n", type=int, default=64, help="examples in the dataset")
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per path")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    home = Home.resolve(args.home).ensure()
    result = run_bench(home, n=args.n, batch=args.batch, steps=args.steps, warmup=args.warmup, trl=not args.no_trl)
    Console(width=max(Console().width, 130)).print(_table(result))
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
