"""LoRA training with resumable checkpoints.

Everything that decides the result is seeded: the LoRA init, the data order (a fixed permutation per
epoch) and each step's randomness (dropout, rollouts), which is reseeded from ``(seed, step)``. So a
run killed at any point and resumed from its last checkpoint ends with the same adapter as one that
was never interrupted.

A checkpoint (every ``checkpoint_every`` steps) holds the adapter weights, the optimizer, the
scheduler, the RNG states, the objective's state and the step (which fixes the data-order position).
It is written into a fresh directory that is renamed into place, then the ``latest`` pointer is
replaced atomically: a kill at any moment leaves the previous checkpoint intact.

Started in several processes by ``accelerate launch`` (see :mod:`._distributed`), every process runs this loop on
the same global batches: each takes a contiguous shard of the step's ``batch_size`` examples, DDP averages the
gradients, and each shard's loss is weighted by its share of the batch's answer tokens, so the update is the one
a single process makes on the whole batch (exactly so for ``sft`` and ``self-distill``, whose losses are token
means; ``mixed`` sums two means, which the token weighting approximates). Only the main process writes the
checkpoints and the adapter; every process resumes from the same checkpoint.
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
from procmem.distill import _distributed as distributed
from procmem.distill.config import DistillConfig, TrainSettings
from procmem.distill.objectives import Example, Objective, ObjectiveLoss, make_objective
from procmem.distill.traces import TraceBuild

__all__ = ["ObjectiveFactory", "TrainResult", "configured_objective", "load_trainable_model", "train_adapter"]

ObjectiveFactory = Callable[[Any, DistillConfig], Objective]
"""Builds the objective from the tokenizer and the config (default: :func:`make_objective`)."""

_ADAPTER, _CHECKPOINTS, _LATEST, _RESULT = "adapter", "checkpoints", "latest", "train_result.json"
_ACCELERATE_STATE = "accelerate"
"""The checkpoint's subdirectory written by ``accelerator.save_state`` (DeepSpeed only)."""


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
    processes: int = 1
    """Processes that trained together (``accelerate launch --num_processes``)."""
    losses: tuple[float, ...] = ()
    """The loss of every step (of the whole global batch), including those before a resume."""

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
    settings = config.train
    if settings.threads:
        torch.set_num_threads(settings.threads)
    engine: _Engine = _Accelerated() if distributed.world_size() > 1 else _Engine()
    if engine.main:
        work_dir.mkdir(parents=True, exist_ok=True)
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
    checkpoint = _checkpoint_to_resume(work_dir / _CHECKPOINTS, fingerprint, console) if engine.main else None
    checkpoint = engine.broadcast(checkpoint)
    state = _Progress(losses=[])
    if checkpoint is not None:
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, objective)
        if engine.main:
            (console or Console(stderr=True)).print(f"resuming training from checkpoint step {state.step}"
                                                    + engine.label)
    resumed_from = state.step if state.step > 0 else None
    losses = state.losses or []
    model.train()
    step_fn, step_optimizer = engine.prepare(_ObjectiveStep(model, objective), optimizer, settings)
    if checkpoint is not None:
        engine.restore(checkpoint)
    started = time.perf_counter()
    with progress_bar(console, quiet=quiet or not engine.main,
                      fields=("loss {task.fields[loss]:.4f}",)) as progress:
        bar = progress.add_task(f"training {objective.name}{engine.label}", total=total, completed=state.step,
                                loss=float("nan"))
        for step in range(state.step, total):
            torch.manual_seed(_step_seed(settings.seed, step, engine.rank))
            batch = _batch(examples, step, steps_per_epoch, settings.batch_size, settings.seed)
            out = step_fn(_shard(batch, engine.rank, engine.processes))
            loss, tokens, processed = engine.backward(out)
            engine.clip(params, settings.max_grad_norm)
            step_optimizer.step()
            scheduler.step()
            step_optimizer.zero_grad(set_to_none=True)
            objective.after_step(model)
            losses.append(loss)
            state = _Progress(step + 1, losses, state.tokens + tokens, state.processed_tokens + processed)
            progress.update(bar, advance=1, loss=losses[-1])
            if state.step % settings.checkpoint_every == 0 and state.step < total:
                engine.checkpoint(work_dir / _CHECKPOINTS, state, fingerprint, model, optimizer, scheduler,
                                  objective)
    seconds = time.perf_counter() - started
    result = TrainResult(
        adapter_dir=work_dir / _ADAPTER, steps=total, resumed_from=resumed_from, examples=len(examples),
        first_loss=losses[0] if losses else float("nan"), final_loss=losses[-1] if losses else float("nan"),
        mean_loss=sum(losses) / len(losses) if losses else float("nan"), tokens=state.tokens,
        processed_tokens=state.processed_tokens, seconds=seconds, processes=engine.processes, losses=tuple(losses),
    )
    engine.save_adapter(step_fn, model, work_dir / _ADAPTER)
    if engine.main:
        write_json(done, result.to_dict())
        shutil.rmtree(work_dir / _CHECKPOINTS, ignore_errors=True)
    engine.barrier()  # the adapter exists once any process returns
    return result


class _ObjectiveStep(nn.Module):
    """The objective's loss on a batch as a module's forward: DDP (or DeepSpeed) sees one forward per step and
    synchronises the gradients of everything it ran through. An empty shard (a global batch smaller than the
    number of processes) gives a zero loss that still reaches every trainable parameter, so that every process
    joins the gradient reduction."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Sequence[Example]) -> ObjectiveLoss:
        if not batch:
            zero = torch.stack([(p * 0).sum() for p in self.model.parameters() if p.requires_grad]).sum()
            return ObjectiveLoss(zero, 0, 0)
        return self.objective.loss(self.model, batch)


class _Engine:
    """One process: the plain loop (no accelerate)."""

    main, rank, processes, label = True, 0, 1, ""

    def broadcast(self, value: Any) -> Any:
        return value

    def prepare(self, step: _ObjectiveStep, optimizer: torch.optim.Optimizer,
                settings: TrainSettings) -> tuple[Any, Any]:
        return step, optimizer

    def restore(self, checkpoint: Path) -> None:
        """Load what only the prepared model and optimizer can load (DeepSpeed's partitions)."""
        return None

    def checkpoint(self, root: Path, state: _Progress, fingerprint: str, model: nn.Module,
                   optimizer: torch.optim.Optimizer, scheduler: Any, objective: Objective) -> None:
        _save_checkpoint(root, state, fingerprint, model, optimizer, scheduler, objective)

    def save_adapter(self, step: Any, model: nn.Module, target: Path) -> None:
        _save_adapter(model, target)

    def backward(self, out: ObjectiveLoss) -> tuple[float, int, int]:
        """Backpropagate; the step's loss and token counts (over the global batch)."""
        out.loss.backward()
        return float(out.loss.detach()), out.tokens, out.processed_tokens

    def clip(self, params: Sequence[nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        return None


class _Accelerated(_Engine):
    """Several processes under accelerate: DDP-wrapped step, token-weighted shard losses, rank 0 writes.

    Under DeepSpeed (written for GPUs, not run here: see docs/guides/distill-accelerate.md) the parameters and
    optimizer state may be partitioned, so checkpoints go through ``accelerator.save_state`` (every process writes
    its partition) and the adapter through ``accelerator.get_state_dict`` (gathered for ZeRO-3).
    """

    def __init__(self) -> None:
        from accelerate.utils import DistributedType

        self.acc = distributed.accelerator()
        if self.acc.distributed_type == DistributedType.FSDP:
            raise ProcmemError("distillation does not support FSDP", where="accelerate config",
                               fix="use DDP (multi-GPU) or DeepSpeed ZeRO: docs/guides/distill-accelerate.md")
        self.sharded = self.acc.distributed_type == DistributedType.DEEPSPEED
        self.rank, self.processes = self.acc.process_index, self.acc.num_processes
        self.main = self.acc.is_main_process
        self.label = f" ({self.processes} processes)"

    def broadcast(self, value: Any) -> Any:
        return distributed.broadcast(value)

    def prepare(self, step: _ObjectiveStep, optimizer: torch.optim.Optimizer,
                settings: TrainSettings) -> tuple[Any, Any]:
        plugin = self.acc.state.deepspeed_plugin
        if plugin is not None:  # DeepSpeed wants the per-process batch and the clipping norm as numbers
            ds = plugin.deepspeed_config
            for key, value in (("train_micro_batch_size_per_gpu", math.ceil(settings.batch_size / self.processes)),
                               ("gradient_clipping", settings.max_grad_norm)):
                if ds.get(key, "auto") == "auto":
                    ds[key] = value
        # The scheduler stays unprepared: accelerate would step it once per process per step.
        wrapped, prepared = self.acc.prepare(step, optimizer)
        return wrapped, prepared

    def restore(self, checkpoint: Path) -> None:
        if (checkpoint / _ACCELERATE_STATE).exists():
            self.acc.load_state(str(checkpoint / _ACCELERATE_STATE))

    def checkpoint(self, root: Path, state: _Progress, fingerprint: str, model: nn.Module,
                   optimizer: torch.optim.Optimizer, scheduler: Any, objective: Objective) -> None:
        if not self.sharded:
            if self.main:
                _save_checkpoint(root, state, fingerprint, model, optimizer, scheduler, objective)
            return
        staging = root / f".staging-step-{state.step:08d}"
        if self.main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.barrier()
        self.acc.save_state(str(staging / _ACCELERATE_STATE))  # every process: its partitions
        self.barrier()
        if self.main:
            _save_checkpoint(root, state, fingerprint, model, None, scheduler, objective, staging=staging)

    def save_adapter(self, step: Any, model: nn.Module, target: Path) -> None:
        if not self.sharded:
            if self.main:
                _save_adapter(model, target)
            return
        gathered = self.acc.get_state_dict(step)  # every process takes part in the gathering
        if self.main:
            _save_adapter(model, target, {k.removeprefix("model."): v for k, v in gathered.items()})

    def backward(self, out: ObjectiveLoss) -> tuple[float, int, int]:
        loss = out.loss.detach().double()
        tokens, loss_sum, processed = distributed.sum_across([out.tokens, float(loss) * out.tokens,
                                                              out.processed_tokens])
        # DDP averages the processes' gradients; weighting each shard by its share of the answer tokens makes
        # that average the gradient of the whole batch's token mean.
        self.acc.backward(out.loss * (out.tokens * self.processes / max(tokens, 1.0)))
        return loss_sum / max(tokens, 1.0), int(tokens), int(processed)

    def clip(self, params: Sequence[nn.Parameter], max_norm: float) -> None:
        self.acc.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        distributed.barrier()


def _result_from(data: dict[str, Any], work_dir: Path) -> TrainResult:
    return TrainResult(**{**data, "adapter_dir": work_dir / _ADAPTER, "losses": tuple(data.get("losses", ()))})


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of ``step``'s randomness in process ``rank`` (rank 0: the one-process seed)."""
    return (seed * 1_000_003 + step + rank * 2**40) % (2**63)


def _batch(examples: Sequence[Example], step: int, steps_per_epoch: int, size: int, seed: int) -> list[Example]:
    """The examples of ``step``: a fixed permutation per epoch, so the step alone fixes the position."""
    epoch, index = divmod(step, steps_per_epoch)
    order = list(range(len(examples)))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return [examples[i] for i in order[index * size:(index + 1) * size]]


def _shard(batch: Sequence[Example], rank: int, processes: int) -> list[Example]:
    """Process ``rank``'s contiguous share of a global batch (sizes differ by at most one; may be empty)."""
    size, extra = divmod(len(batch), processes)
    start = rank * size + min(rank, extra)
    return list(batch[start:start + size + (rank < extra)])


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
                     optimizer: torch.optim.Optimizer | None, scheduler: Any, objective: Objective, *,
                     staging: Path | None = None) -> None:
    """Write the checkpoint of ``state`` and point ``latest`` at it. With ``staging`` (holding the accelerate state:
    adapter and optimizer partitions), only the rest is added to it; ``optimizer`` is then None."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    if staging is None:
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        adapter = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, str(staging / "adapter_model.safetensors"))
    name = f"step-{state.step:08d}"
    try:
        torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict(),
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


def _checkpoint_to_resume(root: Path, fingerprint: str, console: Console | None) -> Path | None:
    """The checkpoint directory to resume from; one for other settings or data is deleted (main process only)."""
    pointer = root / _LATEST
    if not pointer.exists():
        return None
    directory = root / pointer.read_text().strip()
    if read_json(directory / "state.json").get("fingerprint") != fingerprint:
        (console or Console(stderr=True)).print(f"[yellow]checkpoint {directory} is for other settings or data; "
                                                "starting over[/]")
        shutil.rmtree(root, ignore_errors=True)
        return None
    return directory


def _load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     objective: Objective) -> _Progress:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    meta = read_json(directory / "state.json")
    meta.pop("fingerprint")
    if (directory / "adapter_model.safetensors").exists():  # else in the accelerate state (DeepSpeed)
        set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
    saved = torch.load(directory / "trainer.pt", weights_only=False)
    if saved["optimizer"] is not None:
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    objective.load_state_dict(saved["objective"])
    _set_rng_state(saved["rng"])
    return _Progress(**meta)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def _fsync_dir(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _save_adapter(model: nn.Module, target: Path, state_dict: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` (standard PEFT layout) into a staging directory renamed into place; ``state_dict``:
    the model's full weights when they are not in ``model`` itself (gathered from DeepSpeed ZeRO-3)."""
    staging = Path(tempfile.mkdtemp(prefix=".adapter-", dir=target.parent))
    try:
        model.save_pretrained(staging, state_dict=state_dict)  # type: ignore[operator]
        _fsync_dir(staging)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
