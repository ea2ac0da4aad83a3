"""The model layer: the :class:`LLM` seam and its backends.

``load_llm(spec, models_dir=...)`` turns a ``--model`` string into an LLM:

- ``local:default``: the bundled Gemma 3 270M (converted once from its GGUF, then cached);
- ``local:tiny``: a tiny random model for tests and smoke runs (its output is noise);
- ``local:/path/to/hf_dir``: any Hugging Face causal LM directory;
- ``litellm:<model>``: anything litellm calls, e.g. ``litellm:openai/gpt-4o-mini``,
  ``litellm:ollama/llama3``, ``litellm:hosted_vllm/<model>`` (api_base from ``$PROCMEM_API_BASE``).

Local models are batched with :class:`MicroBatcher` when many threads ask at once. transformers (and
litellm) are imported only when a model of that kind is loaded, so importing this package is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmem.core.errors import ProcmemError
from procmem.core.llm import LLM, Generation
from procmem.llm.batching import MicroBatcher
from procmem.llm.bundled import BUNDLED_MODEL_ID, ensure_bundled_model, ensure_tiny_model
from procmem.llm.litellm_backend import LiteLLM
from procmem.llm.per_task import generate_for_tasks
from procmem.llm.tiny import build_tiny_model

if TYPE_CHECKING:
    from procmem.llm.local import LocalLLM, load_model_and_tokenizer

__all__ = [
    "LLM",
    "MODEL_SPEC_FORMS",
    "Generation",
    "LiteLLM",
    "LocalLLM",
    "MicroBatcher",
    "build_tiny_model",
    "ensure_bundled_model",
    "ensure_tiny_model",
    "generate_for_tasks",
    "load_llm",
    "load_model_and_tokenizer",
    "local_model_dir",
]

MODEL_SPEC_FORMS = ("local:default, local:tiny, local:/path/to/hf_model_dir or litellm:<provider>/<model> "
                    "(e.g. litellm:openai/gpt-4o-mini)")
_LAZY = {"LocalLLM", "load_model_and_tokenizer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # imports torch and transformers: only when asked for
        from procmem.llm import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_llm(spec: str, *, models_dir: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None,
             adapter_version: str | None = None, max_batch_size: int = 16) -> LLM:
    """The LLM named by ``spec`` (see the module docstring); ``adapter`` is a LoRA directory or None, labelled
    ``adapter_version`` in episodes (default: the directory's name).

    Bad specs, missing directories and missing API keys raise :class:`~procmem.core.ProcmemError`.
    """
    kind, _, rest = spec.strip().partition(":")
    rest = rest.strip()
    if kind == "local" and rest:
        from procmem.llm.local import LocalLLM

        path, model_id = _local_dir(spec, rest, Path(models_dir))
        return LocalLLM(path, adapter=adapter, adapter_version=adapter_version, model_id=model_id,
                        max_batch_size=max_batch_size)
    if kind == "litellm" and rest:
        if adapter is not None:
            raise ProcmemError(f"{spec}: a LoRA adapter can only be applied to a local model", where="--adapter",
                               fix="drop --adapter, or use a local:... model")
        return LiteLLM(rest)
    raise ProcmemError(f"unknown model {spec!r}", where="--model", fix=f"use {MODEL_SPEC_FORMS}")


def local_model_dir(spec: str, *, models_dir: str | os.PathLike[str]) -> Path:
    """The Hugging Face directory of a ``local:`` spec (building or converting a bundled model on first use).
    Training (distill, eval) needs local weights, so any other spec is a ProcmemError."""
    kind, _, rest = spec.strip().partition(":")
    if kind != "local" or not rest.strip():
        raise ProcmemError(f"{spec!r} is not a local model: training needs local weights", where="model",
                           fix="use local:default, local:tiny or local:/path/to/hf_dir")
    return _local_dir(spec, rest.strip(), Path(models_dir))[0]


def _local_dir(spec: str, rest: str, models_dir: Path) -> tuple[Path, str]:
    if rest == "default":
        return ensure_bundled_model(models_dir), BUNDLED_MODEL_ID
    if rest == "tiny":
        return ensure_tiny_model(models_dir), "tiny"
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise ProcmemError(f"{spec}: no such model directory {path}", where="--model",
                           fix=f"use {MODEL_SPEC_FORMS}")
    if not (path / "config.json").is_file():
        raise ProcmemError(f"{spec}: {path} is not a Hugging Face model directory (no config.json)",
                           where="--model", fix=f"use {MODEL_SPEC_FORMS}")
    return path, path.resolve().name
