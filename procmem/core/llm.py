"""The LLM seam: every backend (procmem.llm) turns rendered prompts into completions; memory, agent and distill
call it through this protocol."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args, runtime_checkable

from procmem.core.config import GenerationConfig

__all__ = ["ENGINES", "LLM", "Engine", "Generation"]

Engine = Literal["auto", "transformers", "llamacpp"]
"""How a local model runs: on llama.cpp (its GGUF file), on transformers, or ``auto`` (llama.cpp for the
bundled model when ``llama-cpp-python`` is installed, else transformers)."""
ENGINES: tuple[Engine, ...] = get_args(Engine)


@dataclass(frozen=True)
class Generation:
    """One completion. ``text`` excludes the prompt and is cut before the first stop string."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@runtime_checkable
class LLM(Protocol):
    """A text-completion backend.

    ``generate`` takes many prompts at once so that local backends can batch them; it returns one
    :class:`Generation` per prompt, in order. Implementations must be safe to call from several
    threads (the agent solves tasks concurrently).
    """

    @property
    def model_id(self) -> str:
        """Stable id of the base model, recorded in every episode (e.g. ``gemma3-270m``)."""
        ...

    @property
    def adapter_version(self) -> str | None:
        """The LoRA adapter in use (e.g. ``v3``), or None for the base model."""
        ...

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]: ...

    def stream(self, prompt: str, config: GenerationConfig) -> Iterator[str]:
        """Yield the completion of one prompt piece by piece (for ``procmem chat``)."""
        ...
