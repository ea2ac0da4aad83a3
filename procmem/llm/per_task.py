"""Generation with per-task decoding settings (``procmem.core.generation_for``), batched by identical settings."""

from __future__ import annotations

from collections.abc import Sequence

from procmem.core import GenerationConfig, Task, generation_for
from procmem.core.llm import LLM, Generation

__all__ = ["generate_for_tasks"]


def generate_for_tasks(llm: LLM, requests: Sequence[tuple[Task, str]], base: GenerationConfig) -> list[Generation]:
    """One generation per ``(task, prompt)``, in order, each decoded with ``generation_for(task, base)``
    (a code task's longer ``max_tokens`` and multi-line stops). Requests sharing settings go in one call."""
    groups: dict[GenerationConfig, list[int]] = {}
    for index, (task, _) in enumerate(requests):
        groups.setdefault(generation_for(task, base), []).append(index)
    results: list[Generation | None] = [None] * len(requests)
    for config, indices in groups.items():
        for index, out in zip(indices, llm.generate([requests[i][1] for i in indices], config), strict=True):
            results[index] = out
    return [r for r in results if r is not None]
