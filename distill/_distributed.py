"""Distillation across processes, under Hugging Face accelerate.

``accelerate launch --multi_gpu --num_processes N -m procmem.cli distill --once`` (or ``procmem distill --once
--processes N``, which runs that command) starts N copies of the same job. The split of work:

- **the main process** (rank 0) takes the job lock, collects the episodes, builds the teacher traces, then, after
  training, runs the gate and registers the adapter. Generation stages run once: they are cached per run, and
  splitting them would make the sampled traces depend on N;
- **every process** trains: each step's global batch (``train.batch_size`` examples, the same as in one process)
  is split into N contiguous shards, gradients are averaged by DDP (``accelerator.prepare`` /
  ``accelerator.backward``), and only the main process writes checkpoints and the adapter;
- **the other processes** wait for the main process's train order (a broadcast), train, and exit. A kill -9 of
  any process makes the launcher stop the rest; the same command then resumes from the last checkpoint.

accelerate is imported only here and only once the job runs in several processes, so ``procmem`` starts fast
and a one-process job runs exactly as before.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from procmem.core import ProcmemError

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["TIMEOUT", "accelerator", "barrier", "broadcast", "is_main_process", "launch_command", "rank",
           "sum_across", "world_size"]

TIMEOUT = timedelta(hours=12)
"""How long a process waits in a collective: the other processes wait for the main one through the whole trace
stage, which can take hours (torch's default of 30 minutes would kill the job)."""


def world_size() -> int:
    """Processes in this job (1 unless started by ``accelerate launch`` / ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among them (0: the main process)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@functools.cache
def accelerator() -> Accelerator:
    """This process's :class:`accelerate.Accelerator` (created once; joins the process group).

    On a machine without CUDA it uses the CPU and the gloo backend; with CUDA, NCCL, or what ``accelerate config``
    chose (DeepSpeed included).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    return Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[InitProcessGroupKwargs(timeout=TIMEOUT)])


def broadcast(value: Any) -> Any:
    """The main process's ``value``, on every process (any picklable object)."""
    from accelerate.utils import broadcast_object_list

    accelerator()
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def sum_across(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the processes (float64)."""
    import torch

    acc = accelerator()
    tensor = torch.tensor(list(values), dtype=torch.float64, device=acc.device)
    torch.distributed.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def barrier() -> None:
    accelerator().wait_for_everyone()


def launch_command(processes: int, module_args: Sequence[str]) -> list[str]:
    """The command that runs ``python -m <module_args>`` in ``processes`` processes on this machine.

    ``--multi_gpu`` selects accelerate's torchrun launcher; on a machine without CUDA the processes then train on
    the CPU with gloo (see :func:`accelerator`). Port 0: the launcher picks a free port, so that two jobs on one
    machine do not collide. A GPU machine with an ``accelerate config`` (DeepSpeed, mixed precision) should call
    ``accelerate launch`` itself: see docs/guides/distill-accelerate.md.
    """
    if processes < 2:
        raise ProcmemError(f"--processes {processes}: needs at least 2", where="--processes",
                           fix="omit --processes to train in this process")
    if importlib.util.find_spec("accelerate") is None:
        raise ProcmemError("accelerate is not installed", where="--processes", fix="pip install accelerate")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0"]
    return [*command, "-m", *module_args]

