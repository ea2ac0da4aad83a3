"""LoRA training: a seeded, resumable loop; a run killed with SIGKILL resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from procmem.distill import DistillConfig
from procmem.distill.objectives import ForwardingObjective, Objective, make_objective
from procmem.distill.traces import TeacherContext, Trace, TraceBuild
from procmem.distill.train import train_adapter

_SCRIPT = '''
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from procmem.distill import DistillConfig
from procmem.distill.train import train_adapter
from procmem.distill.objectives import ForwardingObjective, make_objective
sys.path.insert(0, {tests!r})
from test_distill_train import make_build

class Slow(ForwardingObjective):
    """The real objective, slowed down so that the parent can kill the run in the middle."""
    def loss(self, model, batch):
        time.sleep(0.3)
        return super().loss(model, batch)

config = DistillConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
train_adapter(make_build(), config, model_dir=Path(sys.argv[2]), work_dir=Path(sys.argv[3]), quiet=True,
              objective_factory=lambda tok, cfg: Slow(make_objective(cfg.objective, tok, cfg)))
'''


def make_build(n: int = 12) -> TraceBuild:
    """``n`` verified traces ``Question: i + i? -> 2i`` (a fixed, made-up training set), and the ``n``
    problems as a teacher with a worked example in its context sees them (for self-distillation)."""
    traces, contexts = [], []
    for i in range(n):
        prompt = f"Question: What is {i} + {i}?\nAnswer:"
        traces.append(Trace(task_id=f"t{i}", suite="s", prompt=prompt, completion=f" {2 * i}\n", answer=str(2 * i),
                            teacher_prompt=prompt, memory_ids=(), episode_ids=(f"e{i}",), sample=0, score=1.0,
                            status="kept"))
        contexts.append(TeacherContext(task_id=f"t{i}", suite="s", prompt=prompt,
                                       teacher_prompt=f"Question: What is 1 + 1?\nAnswer: 2\n\n{prompt}"))
    return TraceBuild(kept=tuple(traces), rejected=(), contexts=tuple(contexts))


def _config(base: DistillConfig) -> DistillConfig:
    return base.model_copy(update={"train": base.train.model_copy(update={"epochs": 3, "checkpoint_every": 3})})


def _adapter(work_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work_dir / "adapter" / "adapter_model.safetensors"))


def _checkpoint_step(work_dir: Path) -> int:
    pointer = work_dir / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("-")[1]) if pointer.exists() else 0


def test_training_writes_a_peft_adapter_and_is_reproducible(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path
) -> None:
    config = _config(tiny_config)
    first = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "a", quiet=True)
    assert first.steps == 18 and first.examples == 12 and first.resumed_from is None
    assert first.final_loss < first.first_loss
    assert (first.adapter_dir / "adapter_config.json").exists()
    assert not (tmp_path / "a" / "checkpoints").exists()  # cleaned up once the adapter is saved
    second = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "b", quiet=True)
    for name, tensor in _adapter(tmp_path / "a").items():
        assert torch.equal(tensor, _adapter(tmp_path / "b")[name]), name
    assert second.final_loss == first.final_loss

    # peft loads it back onto the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), first.adapter_dir)
    assert any("lora_" in name for name, _ in loaded.named_parameters())

    # A finished training is returned as is, not retrained.
    again = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "a", quiet=True)
    assert again == first


@pytest.mark.parametrize(("objective", "dropout"), [("sft", 0.0), ("sft", 0.1), ("self-distill", 0.1),
                                                    ("mixed", 0.1)])
def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path, objective: str, dropout: float
) -> None:
    """Killed mid-run, resumed: the same adapter as an uninterrupted run, also where training is random
    (LoRA dropout, self-distillation's sampled rollouts)."""
    config = _config(tiny_config).model_copy(update={
        "objective": objective, "lora": tiny_config.lora.model_copy(update={"dropout": dropout})})
    reference = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "ref", quiet=True)
    total = reference.steps

    work = tmp_path / "killed"
    (tmp_path / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    (tmp_path / "run.py").write_text(_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "config.json"),
                             str(tiny_model_dir), str(work)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _checkpoint_step(work) < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_step(work)
    assert 6 <= killed_at < total and not (work / "adapter").exists()

    resumed = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=work, quiet=True)
    assert resumed.resumed_from == killed_at
    assert resumed.steps == total
    expected = _adapter(tmp_path / "ref")
    for name, tensor in _adapter(work).items():  # the same adapter as a run that was never interrupted
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
    assert resumed.final_loss == pytest.approx(reference.final_loss, rel=1e-4)
    assert resumed.tokens == reference.tokens


class _Crash(ForwardingObjective):
    """The real objective, raising at its ``at``-th loss: an in-process crash in the middle of a run."""

    def __init__(self, inner: Objective, at: int) -> None:
        super().__init__(inner)
        self.at, self.calls = at, 0

    def loss(self, model: Any, batch: Any) -> Any:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("crash")
        return super().loss(model, batch)


def test_a_checkpoint_for_other_data_or_settings_is_not_resumed(
    tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path
) -> None:
    config = _config(tiny_config)
    work = tmp_path / "w"
    with pytest.raises(RuntimeError, match="crash"):
        train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=work, quiet=True,
                      objective_factory=lambda tok, cfg: _Crash(make_objective(cfg.objective, tok, cfg), at=8))
    assert _checkpoint_step(work) == 6
    other_lr = config.model_copy(update={"train": config.train.model_copy(update={"lr": 5e-3})})
    result = train_adapter(make_build(10), other_lr, model_dir=tiny_model_dir, work_dir=work, quiet=True)
    assert result.resumed_from is None and result.steps == 15


def test_a_crashed_run_resumes_in_process_too(tiny_model_dir: Path, tiny_config: DistillConfig, tmp_path: Path) -> None:
    config = _config(tiny_config)
    with pytest.raises(RuntimeError, match="crash"):
        train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "w", quiet=True,
                      objective_factory=lambda tok, cfg: _Crash(make_objective(cfg.objective, tok, cfg), at=11))
    result = train_adapter(make_build(), config, model_dir=tiny_model_dir, work_dir=tmp_path / "w", quiet=True)
    assert result.resumed_from == 9 and result.steps == 18
