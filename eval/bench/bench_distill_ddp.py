"""Benchmark: distillation's training in one process vs two processes under accelerate (CPU, gloo).

The same SFT examples (reasoning-gym ``chain_sum``, as in ``eval/bench/bench_distill.py``), the same global batch
and seed, LoRA dropout 0, trained by :func:`~procmem.distill.train.train_adapter` in three fresh processes:

1. one process, one torch thread (the reference);
2. one process, two torch threads (what one process makes of two cores);
3. two processes of one thread each, started with ``accelerate launch`` (each takes half of every global batch;
   DDP averages the gradients).

It prints every step's loss for 1 and 3, the largest absolute difference between their LoRA weights (and, for
scale, between 1 and 2, which differ only by the threads' summation order), the training time (from the first
step to the last, as :class:`~procmem.distill.train.TrainResult` measures it) and the wall time of each command
(start-up and model loading included), the load average, and saves a PNG of the two loss curves.

Run::

    .venv/bin/python eval/bench/bench_distill_ddp.py [--model local:tiny | --model local:default] [--examples 32]
        [--batch 4] [--epochs 2] [--out runs/bench_distill_ddp] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from procmem.core.machine import load_average

__all__ = ["main", "run_bench"]

_console = Console(stderr=True)
_RUNS = (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1))


def _worker(config_file: Path, model_dir: Path, work: Path, n_examples: int) -> None:
    """One training process (of one or of an ``accelerate launch``): writes ``work/train_result.json``."""
    import torch

    from procmem.distill import DistillConfig
    from procmem.distill.objectives import Example, ForwardingObjective, make_objective
    from procmem.distill.traces import TraceBuild
    from procmem.distill.train import train_adapter
    from procmem.eval.bench.bench_distill import make_examples

    class FixedExamples(ForwardingObjective):
        """SFT on given examples (instead of a run's traces); everything else is the real objective."""

        def examples(self, build: TraceBuild) -> list[Example]:
            return fixed

    config = DistillConfig.model_validate(json.loads(config_file.read_text()))
    torch.set_num_threads(config.train.threads or 1)
    fixed = make_examples(n_examples)
    train_adapter(TraceBuild(kept=(), rejected=(), contexts=()), config, model_dir=model_dir, work_dir=work,
                  quiet=True, objective_factory=lambda tok, cfg: FixedExamples(make_objective(cfg.objective, tok, cfg)))


def _model_dir(spec: str) -> Path:
    from procmem.core import Home
    from procmem.llm import local_model_dir

    return local_model_dir(spec, models_dir=Home.resolve().models)


def run_bench(model: str, examples: int, batch: int, epochs: int, out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from procmem.distill import DistillConfig
    from procmem.distill._distributed import launch_command

    out.mkdir(parents=True, exist_ok=True)
    model_dir = _model_dir(model)
    results: dict[str, Any] = {"model": model, "examples": examples, "global_batch": batch, "epochs": epochs,
                               "load_avg_start": load_average(), "runs": []}
    adapters = []
    for label, processes, threads in _RUNS:
        config = DistillConfig.model_validate({
            "model": model, "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "train": {"lr": 5e-3 if model == "local:tiny" else 2e-4, "epochs": epochs, "batch_size": batch,
                      "max_seq_len": 256, "checkpoint_every": 1000, "threads": threads}})
        work = out / f"p{processes}-t{threads}"
        config_file = out / f"config-p{processes}-t{threads}.json"
        config_file.write_text(json.dumps(config.model_dump(mode="json")))
        worker = ["procmem.eval.bench.bench_distill_ddp", "--worker", str(config_file), str(model_dir), str(work),
                  str(examples)]
        command = [sys.executable, "-m", *worker] if processes == 1 else launch_command(processes, worker)
        if (work / "train_result.json").exists():  # a finished training is not redone: start afresh
            import shutil

            shutil.rmtree(work)
        _console.print(f"{label}: training ...")
        started = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                              text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{label} failed:\n{done.stderr[-4000:]}")
        trained = json.loads((work / "train_result.json").read_text())
        results["runs"].append({"label": label, "processes": processes, "threads": threads, "wall_s": wall,
                                "train_s": trained["seconds"], "steps": trained["steps"],
                                "losses": trained["losses"]})
        adapters.append(load_file(str(work / "adapter" / "adapter_model.safetensors")))

    def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    one, threads2, two = results["runs"]
    results["max_weight_diff_2proc_vs_1proc"] = max_diff(adapters[2], adapters[0])
    results["max_weight_diff_2threads_vs_1thread"] = max_diff(adapters[1], adapters[0])
    results["max_abs_weight"] = max(float(t.abs().max()) for t in adapters[0].values())
    results["max_loss_diff_2proc_vs_1proc"] = max(abs(a - b) for a, b in zip(one["losses"], two["losses"],
                                                                             strict=True))
    results["train_speedup_2proc_vs_1proc_1thread"] = one["train_s"] / two["train_s"]
    results["train_speedup_2proc_vs_1proc_2threads"] = threads2["train_s"] / two["train_s"]
    results["load_avg_end"] = load_average()
    results["plot"] = str(_plot(one["losses"], two["losses"], out / "loss_curves.png", model))
    return results


def _plot(one: list[float], two: list[float], path: Path, model: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = range(1, len(one) + 1)
    ax.plot(steps, one, label="1 process", linewidth=3, alpha=0.5)
    ax.plot(steps, two, label="2 processes (accelerate, gloo)", linestyle="--", marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (whole global batch)")
    ax.set_title(f"distill training, {model}: 1 vs 2 processes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _print(results: dict[str, Any]) -> None:
    table = Table(title=f"distill training, {results['model']}: {results['examples']} examples, global batch "
                        f"{results['global_batch']}, {results['epochs']} epochs")
    for column in ("run", "steps", "train s", "wall s", "final loss"):
        table.add_column(column)
    for run in results["runs"]:
        table.add_row(run["label"], str(run["steps"]), f"{run['train_s']:.2f}", f"{run['wall_s']:.1f}",
                      f"{run['losses'][-1]:.6f}")
    console = Console()
    console.print(table)
    one, _, two = results["runs"]
    console.print("step  loss 1 process  loss 2 processes")
    for step, (a, b) in enumerate(zip(one["losses"], two["losses"], strict=True), start=1):
        console.print(f"{step:4d}  {a:.6f}  {b:.6f}", highlight=False)
    console.print(
        f"max |LoRA weight| {results['max_abs_weight']:.4g}; max |weight diff| 2 processes vs 1: "
        f"{results['max_weight_diff_2proc_vs_1proc']:.3g} (1 process, 2 threads vs 1 thread: "
        f"{results['max_weight_diff_2threads_vs_1thread']:.3g}); max |loss diff| "
        f"{results['max_loss_diff_2proc_vs_1proc']:.3g}\n"
        f"training time ratio 1 process / 2 processes: {results['train_speedup_2proc_vs_1proc_1thread']:.2f}x "
        f"(vs 1 process x 2 threads: {results['train_speedup_2proc_vs_1proc_2threads']:.2f}x); load average "
        f"{results['load_avg_start']} -> {results['load_avg_end']}; plot: {results['plot']}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="local:tiny",
                        help="local:tiny, local:default (the bundled Gemma 3 270M) or local:/path")
    parser.add_argument("--examples", type=int, default=32, help="SFT examples (chain_sum)")
    parser.add_argument("--batch", type=int, default=4, help="global batch (train.batch_size)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the examples")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_distill_ddp"), help="work directory and plot")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    args = parser.parse_args(argv)
    results = run_bench(args.model, args.examples, args.batch, args.epochs, args.out)
    _print(results)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
