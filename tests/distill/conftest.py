"""Distill fixtures: a fast config for the tiny model, and a fresh trainable LoRA model on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from procmem.distill import DistillConfig


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model's ops are too small to split: on a busy 2-core machine 2 threads are ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def niceness(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`procmem distill` renices its own process (train.nice): run in-process by CliRunner, that would be the test
    runner's. ``os.nice`` is recorded instead: the increments asked for, in order."""
    import os

    asked: list[int] = []

    def nice(increment: int) -> int:
        asked.append(increment)
        return sum(asked)

    monkeypatch.setattr(os, "nice", nice)
    return asked


@pytest.fixture
def tiny_config() -> DistillConfig:
    """Small, deterministic settings (no LoRA dropout) that train the tiny model in a fraction of a second."""
    return DistillConfig.model_validate({
        "model": "local:tiny",
        "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0},
        "train": {"lr": 1e-2, "epochs": 1, "batch_size": 2, "max_seq_len": 128, "checkpoint_every": 2},
        "self_distill": {"max_new_tokens": 8},
    })


@pytest.fixture
def lora_model(tiny_model_dir: Path, tiny_config: DistillConfig) -> tuple[Any, Any]:
    """A fresh PEFT LoRA model on the tiny base (its B matrices start at zero: output == base)."""
    from procmem.distill.train import load_trainable_model

    return load_trainable_model(tiny_model_dir, tiny_config, None)


def write_suite(path: Path, n: int = 6) -> Path:
    """A JSONL suite the tiny model can pass and fail: odd tasks accept any answer, even ones none."""
    import json

    rows = [{"id": f"{split}{i}", "prompt": f"Say something about {i} ({split}).", "split": split,
             "verifier": "regex:(?s).*" if i % 2 else "exact:an answer nobody gives"}
            for split in ("train", "test") for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    return write_suite(tmp_path / "tasks.jsonl")


@pytest.fixture
def run_config(tiny_config: DistillConfig) -> DistillConfig:
    """``tiny_config`` with a small teacher and gate; the gate passes a candidate that is no worse."""
    return tiny_config.model_copy(update={
        "traces": tiny_config.traces.model_copy(update={"k": 2, "max_tokens": 4}),
        "gate": tiny_config.gate.model_copy(update={"n_test": 6, "n_holdout": 0, "min_improvement": 0.0,
                                                    "level": 1.0, "max_tokens": 4}),
    })
