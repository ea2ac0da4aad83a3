"""Model-layer fixtures: the tiny model behind LocalLLM; the ``bundled`` tests run only when asked for."""

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
