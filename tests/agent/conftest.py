"""Agent fixtures: the real tiny model behind a spy that records the prompts it was given."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from procmem.core import GenerationConfig
from procmem.llm import Generation, LocalLLM


class PromptSpy:
    """Wraps a real LLM and remembers every prompt and batch size it saw."""

    def __init__(self, llm: LocalLLM) -> None:
        self._llm = llm
        self._lock = threading.Lock()
        self.prompts: list[str] = []
        self.batch_sizes: list[int] = []

    @property
    def model_id(self) -> str:
        return self._llm.model_id

    @property
    def adapter_version(self) -> str | None:
        return self._llm.adapter_version

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        with self._lock:
            self.prompts.extend(prompts)
            self.batch_sizes.append(len(prompts))
        return self._llm.generate(prompts, config)

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        with self._lock:
            self.prompts.append(prompt)
        return self._llm.stream(prompt, config)


@pytest.fixture(scope="session")
def tiny_llm(tiny_model_dir: Path) -> LocalLLM:
    return LocalLLM(tiny_model_dir)


@pytest.fixture
def spy(tiny_llm: LocalLLM) -> PromptSpy:
    return PromptSpy(tiny_llm)
