"""Fixtures shared by every test package: an offline environment, a fresh home, the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def pytest_configure(config: pytest.Config) -> None:
    # The tiny model's matrices are too small to gain from threads; on a busy 2-core box two threads
    # made each call up to 20x slower than one.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session fixtures (the embedder writing its GGUF, ...) run before any per-test home exists: they get a
    session home of their own, never the user's ~/.procmem."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROCMEM_HOME", str(tmp_path_factory.mktemp("procmem-session-home")))
        yield


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's ~/.procmem: a command run without --home gets a temporary home."""
    monkeypatch.setenv("PROCMEM_HOME", str(tmp_path_factory.mktemp("procmem-home")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Gemma 3 with a byte-level tokenizer (no download)."""
    from procmem.llm.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as an F32 GGUF file (for the llama.cpp engine)."""
    from procmem.llm.gguf_io import write_gemma3_gguf

    return write_gemma3_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An empty, initialised PROCMEM_HOME."""
    from procmem.core import Home

    return Home(tmp_path / "home").ensure()
