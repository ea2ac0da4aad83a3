"""LoRA training with resumable checkpoints.

Everything that decides the result is seeded: the LoRA init, the data order (a fixed permutation per
epoch) and each step's randomness (dropout, rollouts), which is reseeded from ``(seed, step)``. So a
run killed at any point and resumed from its last checkpoint ends with the same adapter as one that
was never interrupted.

A checkpoint (every ``checkpoint_every`` steps) holds the adapter weights, the optimizer, the
scheduler, the RNG states, the objective's state and the step (which fixes the data-order position).
It is written into a fresh directory that is renamed into place, then the ``latest`` pointer is
replaced atomically: a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from procmem.core import ProcmemError
from procmem.core.fileio import atomic_write_text, hash_strings, read_json, write_json
from procmem.core.progress import progress_bar
from procmem.distill.config import DistillConfig
from procmem.distill.objectives import Example, Objective, make_objective
from procmem.distill.traces import TraceBuild

__all__ = ["ObjectiveFactory", "TrainResult", "configured_objective", "load_trainable_model", "train_adapter"]

ObjectiveFactory = Callable[[Any, DistillConfig], Objective]
"""Builds the objective from the tokenizer and the config (default: :func:`make_objective`)."""

_ADAPTER, _CHECKPOINTS, _LATEST, _RESULT = "adapter", "checkpoints", "latest", "train_result.json"


@dataclass(frozen=True)
class TrainResult:
    """What a finished training produced."""

    adapter_dir: Path
    steps: int
    resumed_from: int | None
    """The checkpoint step this process resumed from (None: started from scratch)."""
    examples: int
    first_loss: float
    final_loss: float
    mean_loss: float
    tokens: int
    """Answer tokens trained on (over all steps, including those before a resume)."""
    processed_tokens: int
    seconds: float
    """Training time in this process."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adapter_dir": str(self.adapter_dir)}


@dataclass
class _Progress:
    """The part of the training state that checkpoints carry besides tensors."""

    step: int = 0
    losses: list[float] | None = None
    tokens: int = 0
    processed_tokens: int = 0


def load_trainable_model(model_dir: Path, config: DistillConfig, parent: Path | None) -> tuple[nn.Module, Any]:
    """The base model with a trainable LoRA adapter: the parent's (if continuing from it) or a new one."""
    from peft import LoraConfig, get_peft_model

    from procmem.llm import load_model_and_tokenizer

    torch.manual_seed(config.train.seed)  # the LoRA init
    with warnings.catch_warnings():  # peft calls a transformers API that warns about its own deprecation
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if parent is not None and config.lora.init_from_parent:
            model, tokenizer = load_model_and_tokenizer(model_dir, adapter=parent, trainable=True)
        else:
            base, tokenizer = load_model_and_tokenizer(model_dir, trainable=True)
            lora = config.lora
            model = get_peft_model(base, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    model.config.use_cache = False
    return model, tokenizer


def configured_objective(tokenizer: Any, config: DistillConfig) -> Objective:
    """The default :data:`ObjectiveFactory`: the objective named by ``config.objective``."""
    return make_objective(config.objective, tokenizer, config)


def train_adapter(build: TraceBuild, config: DistillConfig, *, model_dir: Path, work_dir: Path,
                  parent: Path | None = None, objective_factory: ObjectiveFactory | None = None,
                  console: Console | None = None, quiet: bool = False) -> TrainResult:
    """Train a LoRA adapter on ``build`` into ``work_dir/adapter``; resume from ``work_dir``'s checkpoint.

    Rerunning with the same inputs after a crash continues from the last checkpoint; a finished
    training is returned as is.
    """
    done = work_dir / _RESULT
    if done.exists() and (work_dir / _ADAPTER / "adapter_config.json").exists():
        return _result_from(read_json(done), work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, tokenizer = load_trainable_model(model_dir, config, parent)
    objective = (objective_factory or configured_objective)(tokenizer, config)
    examples = objective.examples(build)
    if not examples:
        raise ProcmemError(f"objective {objective.name} has no training examples", where="distill run",
                           fix="record more episodes (procmem solve) or lower traces.* thresholds")
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = _linear_schedule(optimizer, settings.warmup_steps, total)
    fingerprint = _fingerprint(config, examples, parent)
    state = _resume(work_dir / _CHECKPOINTS, fingerprint, model, optimizer, scheduler, objective, console)
    resumed_from = state.step if state.step > 0 else None
    losses = state.losses or []
    model.train()
    started = time.perf_counter()
    with progress_bar(console, quiet=quiet, fields=("loss {task.fields[loss]:.4f}",)) as progress:
        bar = progress.add_task(f"training {objective.name}", total=total, completed=state.step, loss=float("nan"))
        for step in range(state.step, total):
            torch.manual_seed(_step_seed(settings.seed, step))
            batch = _batch(examples, step, steps_per_epoch, settings.batch_size, settings.seed)
            out = objective.loss(model, batch)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            objective.after_step(model)
            losses.append(float(out.loss.detach()))
            state = _Progress(step + 1, losses, state.tokens + out.tokens,
                              state.processed_tokens + out.processed_tokens)
            progress.update(bar, advance=1, loss=losses[-1])
            if state.step % settings.checkpoint_every == 0 and state.step < total:
                _save_checkpoint(work_dir / _CHECKPOINTS, state, fingerprint, model, optimizer, scheduler,
                                 objective)
    seconds = time.perf_counter() - started
    _save_adapter(model, work_dir / _ADAPTER)
    result = TrainResult(
        adapter_dir=work_dir / _ADAPTER, steps=total, resumed_from=resumed_from, examples=len(examples),
        first_loss=losses[0] if losses else float("nan"), final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / len(losses) if losses else float("nan"), tokens=state.tokens,
        processed_tokens=state.processed_tokens, seconds=seconds,
    )
    write_json(done, result.to_dict())
    shutil.rmtree(work_dir / _CHECKPOINTS, ignore_errors=True)
    return result


def _result_from(data: dict[str, Any], work_dir: Path) -> TrainResult:
    return TrainResult(**{**data, "adapter_dir": work_dir / _ADAPTER})


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _batch(examples: Sequence[Example], step: int, steps_per_epoch: int, size: int, seed: int) -> list[Example]:
    """The examples of ``step``: a fixed permutation per epoch, so the step alone fixes the position."""
    epoch, index = divmod(step, steps_per_epoch)
    order = list(range(len(examples)))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return [examples[i] for i in order[index * size:(index + 1) * size]]


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _fingerprint(config: DistillConfig, examples: Sequence[Example], parent: Path | None) -> str:
    """What a checkpoint must agree with to be resumed: settings, data and parent adapter."""
    settings = json.dumps({"objective": config.objective, "train": config.train.model_dump(mode="json"),
                           "lora": config.lora.model_dump(mode="json"), "model": config.model,
                           "self_distill": config.self_distill.model_dump(mode="json"),
                           "mixed": config.mixed.model_dump(mode="json")}, sort_keys=True)
    data = [json.dumps(asdict(e), sort_keys=True) for e in examples]
    return hash_strings([settings, str(parent), *data])


# ----------------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(root: Path, state: _Progress, fingerprint: str, model: nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, objective: Objective) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    name = f"step-{state.step:08d}"
    try:
        adapter = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, str(staging / "adapter_model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "objective": objective.state_dict(), "rng": _rng_state()}, staging / "trainer.pt")
        write_json(staging / "state.json", {**asdict(state), "fingerprint": fingerprint})
        _fsync_dir(staging)
        target = root / name
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(root / _LATEST, name + "\n")
    for old in root.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _resume(root: Path, fingerprint: str, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            objective: Objective, console: Console | None) -> _Progress:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    pointer = root / _LATEST
    if not pointer.exists():
        return _Progress(losses=[])
    directory = root / pointer.read_text().strip()
    meta = read_json(directory / "state.json")
    if meta.pop("fingerprint") != fingerprint:
        (console or Console(stderr=True)).print(f"[yellow]checkpoint {directory} is for other settings or data; "
                                                "starting over[/]")
        shutil.rmtree(root, ignore_errors=True)
        return _Progress(losses=[])
    set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
    saved = torch.load(directory / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    objective.load_state_dict(saved["objective"])
    _set_rng_state(saved["rng"])
    state = _Progress(**meta)
    (console or Console(stderr=True)).print(f"resuming training from checkpoint step {state.step}")
    return state


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _save_adapter(model: nn.Module, target: Path) -> None:
    """``save_pretrained`` (standard PEFT layout) into a staging directory renamed into place."""
    staging = Path(tempfile.mkdtemp(prefix=".adapter-", dir=target.parent))
    try:
        model.save_pretrained(staging)  # type: ignore[operator]
        _fsync_dir(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
