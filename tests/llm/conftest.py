"""Model-layer fixtures: the tiny model behind LocalLLM and the llama.cpp engine, a tiny LoRA adapter; the
``bundled`` tests run only when asked for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from procmem.llm import LocalLLM

RUN_BUNDLED_ENV = "PROCMEM_RUN_BUNDLED"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``bundled`` (the real Gemma, ~1 min) unless ``-m bundled`` selects them or
    ``$PROCMEM_RUN_BUNDLED=1``."""
    asked = "bundled" in (config.option.markexpr or "") or os.environ.get(RUN_BUNDLED_ENV) == "1"
    if asked:
        return
    skip = pytest.mark.skip(reason=f"loads the bundled model: run with -m bundled or {RUN_BUNDLED_ENV}=1")
    for item in items:
        if item.get_closest_marker("bundled") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and on a busy machine OpenMP's spinning threads make
    it up to 20x slower: run these tests on one, then restore the setting for other packages."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def local_tiny(tiny_model_dir: Path) -> LocalLLM:
    """The tiny random model, loaded once (its greedy output is deterministic)."""
    return LocalLLM(tiny_model_dir)


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter of the tiny model with non-zero weights, so that it changes the model's output."""
    from peft import LoraConfig, get_peft_model

    from procmem.llm import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_model_dir, trainable=True)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  init_lora_weights=False))
    directory = tmp_path_factory.mktemp("adapters") / "v1"
    peft_model.save_pretrained(directory)
    return directory
