"""Distillation under accelerate: 2 real CPU processes (gloo) on the tiny model.

- the same global batches, split between the processes, give the single-process adapter (within 1e-5);
- a process whose shard is empty (global batch 1) still joins the gradient reduction;
- a kill -9 of either process stops the job; the same command resumes from the checkpoint and finishes;
- ``procmem distill --once --processes 2`` runs the whole job: one registered version, one report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_train_worker import LoggedObjective
from safetensors.torch import load_file
from test_distill_cli import CONFIG
from test_distill_train import make_build

from procmem.core import Home
from procmem.distill import DistillConfig
from procmem.distill._distributed import launch_command
from procmem.distill.objectives import make_objective
from procmem.distill.train import train_adapter

pytestmark = pytest.mark.slow

_WORKER = str(Path(__file__).parent / "ddp_train_worker.py")
WEIGHT_ATOL = 1e-5
"""Max |2-process - 1-process| LoRA weight: the gradients differ only by float32 summation order (the all-reduce);
measured ~4e-7 on weights of magnitude ~0.16 after 9 steps at lr 1e-2."""


def _config(base: DistillConfig) -> DistillConfig:
    """12 examples, global batch 4 (2 per process), 3 epochs: 9 steps, a checkpoint every 3; no dropout."""
    return base.model_copy(update={"train": base.train.model_copy(update={"epochs": 3, "batch_size": 4,
                                                                          "checkpoint_every": 3})})


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _launch(tmp: Path, config: DistillConfig, model_dir: Path, work: Path, logs: Path,
            sleep: float = 0.0) -> subprocess.Popen[str]:
    """``accelerate launch`` of 2 worker processes training ``make_build()`` (see ddp_train_worker.py)."""
    config_file = tmp / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json")))
    command = launch_command(2, [])[:-1]  # the launcher without its trailing ``-m``: the worker is a script
    command += [_WORKER, str(config_file), str(model_dir), str(work), str(logs), str(sleep)]
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _adapter(work: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work / "adapter" / "adapter_model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _shards(logs: Path, rank: int) -> list[list[str]]:
    return [json.loads(line) for line in (logs / f"shards-{rank}.jsonl").read_text().splitlines()]


def test_two_processes_train_the_adapter_one_process_trains(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path
) -> None:
    config = _config(tiny_config)
    one_log = tmp_path / "one.jsonl"
    one = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "one", quiet=True,
                        objective_factory=lambda tok, cfg: LoggedObjective(make_objective(cfg.objective, tok, cfg),
                                                                           one_log, 0.0))
    _finish(_launch(tmp_path, config, tiny_model_dir, tmp_path / "two", tmp_path / "logs"))
    two = json.loads((tmp_path / "logs" / "result.json").read_text())

    # Data sharded: each step's global batch is split in two contiguous halves, one per process.
    batches = [json.loads(line) for line in one_log.read_text().splitlines()]
    rank0, rank1 = _shards(tmp_path / "logs", 0), _shards(tmp_path / "logs", 1)
    assert len(batches) == len(rank0) == len(rank1) == one.steps == 9
    for batch, first, second in zip(batches, rank0, rank1, strict=True):
        assert len(first) == len(second) == 2 and first + second == batch

    # Gradients synchronised: the same losses and the same adapter as one process on whole batches.
    assert two["processes"] == 2 and two["steps"] == one.steps and two["tokens"] == one.tokens
    loss_diff = max(abs(a - b) for a, b in zip(one.losses, two["losses"], strict=True))
    weight_diff = _max_diff(_adapter(tmp_path / "one"), _adapter(tmp_path / "two"))
    print(f"\n1 process losses: {[round(x, 6) for x in one.losses]}\n2 processes losses: "
          f"{[round(x, 6) for x in two['losses']]}\nmax |loss diff| {loss_diff:.3g}, max |LoRA weight diff| "
          f"{weight_diff:.3g} (tolerance {WEIGHT_ATOL:g})")
    assert loss_diff < 1e-5
    assert weight_diff < WEIGHT_ATOL
    assert not (tmp_path / "two" / "checkpoints").exists()  # the main process cleaned up


def test_a_process_with_an_empty_shard_still_joins_the_gradient_reduction(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path
) -> None:
    """Global batch 1 on 2 processes: rank 1's shard is always empty; its zero gradient keeps DDP in step."""
    config = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"batch_size": 1})})
    one = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "one", quiet=True)
    _finish(_launch(tmp_path, config, tiny_model_dir, tmp_path / "two", tmp_path / "logs"))
    two = json.loads((tmp_path / "logs" / "result.json").read_text())
    assert len(_shards(tmp_path / "logs", 0)) == two["steps"] == one.steps == 12
    assert not (tmp_path / "logs" / "shards-1.jsonl").exists()  # rank 1 never had an example
    assert max(abs(a - b) for a, b in zip(one.losses, two["losses"], strict=True)) < 1e-5
    assert _max_diff(_adapter(tmp_path / "one"), _adapter(tmp_path / "two")) < WEIGHT_ATOL


def test_shards_are_contiguous_and_cover_the_batch() -> None:
    from procmem.distill.train import _shard

    batch = list(range(7))
    assert [_shard(batch, r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]  # type: ignore[arg-type]
    assert [_shard(batch[:1], r, 2) for r in range(2)] == [[0], []]  # type: ignore[arg-type]


@pytest.mark.parametrize(("args", "message"), [
    (("--every", "6h", "--processes", "2"), "--every runs in one process"),
])
def test_processes_needs_once(home: Home, args: tuple[str, ...], message: str) -> None:
    from typer.testing import CliRunner

    from procmem.cli import app

    result = CliRunner().invoke(app, ["--home", str(home.root), "distill", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("victim", [1, 0])
def test_a_kill_9_of_either_process_resumes_from_the_checkpoint(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path, victim: int
) -> None:
    config = _config(tiny_config)
    reference = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "ref", quiet=True)
    work, logs = tmp_path / "work", tmp_path / "logs"
    launcher = _launch(tmp_path, config, tiny_model_dir, work, logs, sleep=0.5)
    pointer = work / "checkpoints" / "latest"
    try:
        deadline = time.monotonic() + 240
        while not pointer.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launcher.poll() is None, launcher.communicate()[0][-4000:]
        os.kill(int((logs / f"pid-{victim}").read_text()), signal.SIGKILL)
        out, _ = launcher.communicate(timeout=120)  # the launcher stops the other process and fails
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0, out[-4000:]
    killed_at = int(pointer.read_text().split("-")[1])
    assert 3 <= killed_at < reference.steps and not (work / "adapter").exists()

    _finish(_launch(tmp_path, config, tiny_model_dir, work, logs))
    resumed = json.loads((logs / "result.json").read_text())
    assert resumed["resumed_from"] == killed_at and resumed["steps"] == reference.steps
    assert resumed["processes"] == 2 and resumed["tokens"] == reference.tokens
    assert _max_diff(_adapter(work), _adapter(tmp_path / "ref")) < WEIGHT_ATOL
    assert max(abs(a - b) for a, b in zip(resumed["losses"], reference.losses, strict=True)) < 1e-5


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P (safe path) is new in 3.11")
def test_distill_once_with_two_processes_registers_one_version(home: Home, suite_file: Path,
                                                               tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from procmem.cli import app

    solved = CliRunner().invoke(app, ["--home", str(home.root), "solve", "--suite", str(suite_file), "--model",
                                      "local:tiny", "--n", "6", "--json"])
    assert solved.exit_code == 0, solved.output
    config_file = tmp_path / "distill.toml"
    config_file.write_text(CONFIG.format(min_improvement=0.0))
    # -P: run from the checkout like a user's installed procmem; the launched processes must not import the
    # source tree either (they run ``python -m procmem.cli`` in this directory)
    result = subprocess.run([sys.executable, "-P", "-m", "procmem.cli", "--home", str(home.root), "distill", "--once",
                             "--json", "--config", str(config_file), "--processes", "2"],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1, result.stdout  # only the main process reports
    out = reports[0]
    assert out["status"] == "promoted" and out["version"] == "v1" and out["train"]["processes"] == 2
    assert sorted(p.name for p in home.adapters.iterdir() if p.name.startswith("v")) == ["v1"]
    assert "accelerate.commands.launch" in result.stderr
