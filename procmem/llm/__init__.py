"""The model layer: the :class:`LLM` seam and its backends.

``open_policy(home, model=..., adapter=...)`` opens "the model this home should serve" (the one policy loader every
front end calls, :mod:`procmem.llm.policy`); :class:`PolicyHost` keeps a long-running session on the promoted
version. Under them, ``load_llm(spec, models_dir=...)`` turns a ``--model`` string into an LLM:

- ``local:default``: the bundled Gemma 3 270M (converted once from its GGUF, then cached);
- ``local:default-f32`` (``-f16``, ``-q8_0``, ``-q4_k_m``): the same model with the llama.cpp engine's weights in
  that precision (``local:default`` runs the shipped Q4_K_M weights, its Q5_0 tensors widened to Q8_0 once: the
  same numbers on faster kernels; ``f32`` holds exactly the dequantised values transformers runs, so the two
  engines agree); transformers always runs fp32;
- ``local:tiny``: a tiny random model for tests and smoke runs (its output is noise);
- ``local:/path/to/hf_dir``: any Hugging Face causal LM directory;
- ``local:/path/to/model.gguf``: a GGUF model file (llama.cpp engine);
- ``litellm:<model>``: anything litellm calls, e.g. ``litellm:openai/gpt-4o-mini``,
  ``litellm:ollama/llama3``, ``litellm:hosted_vllm/<model>`` (api_base from ``$PROCMEM_API_BASE``).

``engine`` picks how a local model runs: ``llamacpp`` (:class:`LlamaCppLLM`: the GGUF file on llama.cpp,
continuous batching, hot-swappable LoRA adapters), ``transformers`` (:class:`LocalLLM`: fp32 weights, also
what training uses) or ``auto``: llama.cpp for ``local:default`` and GGUF files when ``llama-cpp-python``
is installed, transformers otherwise (``local:tiny`` and Hugging Face directories).

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` unless it is set (see
:func:`~procmem.llm.llamacpp.prefer_passive_openmp`): llama.cpp's OpenMP threads then sleep instead of spinning
while they wait, so a descheduled thread does not stall the others on a machine other processes share.

transformers batches through :class:`MicroBatcher` when many threads ask at once; the llama.cpp engine
batches concurrent calls itself. transformers, llama.cpp and litellm are imported only when a model of
that kind is loaded, so importing this package is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmem.core.errors import ProcmemError
from procmem.core.llm import ENGINES, LLM, Generation
from procmem.llm._limits import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQUENCE_TOKENS
from procmem.llm.batching import MicroBatcher
from procmem.llm.bundled import (
    BUNDLED_MODEL_ID,
    ensure_bundled_gguf,
    ensure_bundled_model,
    ensure_tiny_gguf,
    ensure_tiny_model,
)
from procmem.llm.litellm_backend import LiteLLM
from procmem.llm.llamacpp import (
    PRECISIONS,
    EngineConfig,
    LlamaCppLLM,
    Precision,
    llama_cpp_available,
    prefer_passive_openmp,
)
from procmem.llm.per_task import generate_for_tasks
from procmem.llm.policy import Limits, PolicyChoice, PolicyHost, choose_policy, close_llm, open_policy, opened_policy
from procmem.llm.tiny import build_tiny_model

if TYPE_CHECKING:
    from procmem.llm.local import LocalLLM, load_model_and_tokenizer

__all__ = [
    "ENGINES",
    "LLM",
    "MODEL_SPEC_FORMS",
    "PRECISIONS",
    "EngineConfig",
    "Generation",
    "Limits",
    "LiteLLM",
    "LlamaCppLLM",
    "LocalLLM",
    "MicroBatcher",
    "PolicyChoice",
    "PolicyHost",
    "Precision",
    "build_tiny_model",
    "choose_policy",
    "close_llm",
    "ensure_bundled_model",
    "ensure_tiny_model",
    "generate_for_tasks",
    "llama_cpp_available",
    "load_llm",
    "load_model_and_tokenizer",
    "local_model_dir",
    "open_policy",
    "opened_policy",
    "runs_on_llamacpp",
]

MODEL_SPEC_FORMS = ("local:default (or local:default-f32, -f16, -q8_0), local:tiny, local:/path/to/hf_model_dir, "
                    "local:/path/to/model.gguf or litellm:<provider>/<model> (e.g. litellm:openai/gpt-4o-mini)")
_LAZY = {"LocalLLM", "load_model_and_tokenizer"}
_BUILT_IN = ("default", "tiny")

prefer_passive_openmp()  # before torch or llama.cpp load libgomp, which reads it once


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # imports torch and transformers: only when asked for
        from procmem.llm import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_llm(spec: str, *, models_dir: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None,
             adapter_version: str | None = None, max_batch_size: int = 16, engine: str = "auto",
             max_batch_tokens: int | None = None, max_sequence_tokens: int | None = None) -> LLM:
    """The LLM named by ``spec`` (see the module docstring); ``adapter`` is a LoRA directory or None, labelled
    ``adapter_version`` in episodes (default: the directory's name); ``engine`` is one of :data:`ENGINES`.
    ``max_batch_size`` bounds a batch (llama.cpp: sequences at once). For transformers, ``max_batch_tokens`` bounds
    a batch's memory: rows x (longest prompt + new tokens) (default
    :data:`~procmem.llm._limits.DEFAULT_MAX_BATCH_TOKENS`), and ``max_sequence_tokens`` one sequence's prompt +
    completion below the model's context (default :data:`~procmem.llm._limits.DEFAULT_MAX_SEQUENCE_TOKENS`); the
    llama.cpp engine sizes its KV cache once, at start, from ``max_sequence_tokens`` (its ``n_ctx_per_seq``, default
    4096) and ignores ``max_batch_tokens``. A prompt that leaves no room for an answer raises
    :class:`~procmem.core.errors.ContextLengthError` before anything is allocated.

    Bad specs, missing directories, a missing engine and missing API keys raise :class:`~procmem.core.ProcmemError`.
    """
    if engine not in ENGINES:
        raise ProcmemError(f"unknown engine {engine!r}", where="--engine", fix=f"use one of {', '.join(ENGINES)}")
    kind, _, rest = spec.strip().partition(":")
    rest = rest.strip()
    if kind == "local" and rest:
        if _uses_llamacpp(rest, engine):
            return _load_llamacpp(spec, rest, Path(models_dir), adapter, adapter_version, max_batch_size,
                                  max_sequence_tokens)
        from procmem.llm.local import LocalLLM

        path, model_id = _local_dir(spec, rest, Path(models_dir))
        return LocalLLM(path, adapter=adapter, adapter_version=adapter_version, model_id=model_id,
                        max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS,
                        max_sequence_tokens=max_sequence_tokens or DEFAULT_MAX_SEQUENCE_TOKENS)
    if kind == "litellm" and rest:
        if adapter is not None:
            raise ProcmemError(f"{spec}: a LoRA adapter can only be applied to a local model", where="--adapter",
                               fix="drop --adapter, or use a local:... model")
        if engine != "auto":
            raise ProcmemError(f"{spec}: --engine {engine} applies to local models only", where="--engine",
                               fix="drop --engine, or use a local:... model")
        return LiteLLM(rest)
    raise ProcmemError(f"unknown model {spec!r}", where="--model", fix=f"use {MODEL_SPEC_FORMS}")


def runs_on_llamacpp(spec: str, engine: str = "auto") -> bool:
    """Whether :func:`load_llm` would run ``spec`` with ``engine`` on the llama.cpp engine (without loading it)."""
    kind, _, rest = spec.strip().partition(":")
    try:
        return kind == "local" and bool(rest.strip()) and engine in ENGINES and _uses_llamacpp(rest.strip(), engine)
    except ProcmemError:  # a combination load_llm refuses (it says why)
        return False


def _uses_llamacpp(rest: str, engine: str) -> bool:
    is_gguf = rest.endswith(".gguf")
    if engine == "transformers" and is_gguf:
        raise ProcmemError(f"local:{rest} is a GGUF file, which the transformers engine does not read",
                           where="--engine", fix="use --engine llamacpp (or auto)")
    if engine == "auto":
        name, precision = _built_in(rest)
        return is_gguf or ((name == "default" or precision is not None) and llama_cpp_available())
    return engine == "llamacpp"


def _built_in(rest: str) -> tuple[str | None, Precision | None]:
    """``default`` → ("default", None); ``default-f32`` → ("default", "f32"); anything else → (None, None)."""
    if rest in _BUILT_IN:
        return rest, None
    name, _, suffix = rest.partition("-")
    for precision in PRECISIONS:
        if name in _BUILT_IN and suffix == precision:
            return name, precision
    return None, None


def _load_llamacpp(spec: str, rest: str, models_dir: Path, adapter: str | os.PathLike[str] | None,
                   adapter_version: str | None, max_batch_size: int, max_sequence_tokens: int | None = None) -> LLM:
    name, precision = _built_in(rest)
    if name == "default":
        path, model_id = ensure_bundled_gguf(models_dir, precision or "q4_k_m"), BUNDLED_MODEL_ID
    elif name == "tiny":
        path, model_id = ensure_tiny_gguf(models_dir, precision or "f32"), "tiny"
    else:
        path = Path(rest).expanduser()
        if not (path.is_file() and path.suffix == ".gguf"):
            raise ProcmemError(f"{spec}: the llama.cpp engine needs a .gguf model file, not {path}",
                               where="--model", fix="pass local:/path/to/model.gguf, or use --engine transformers")
        model_id = path.stem
    return LlamaCppLLM(path, model_id=model_id, adapter=adapter, adapter_version=adapter_version,
                       config=EngineConfig(n_seq_max=max_batch_size, **(
                           {"n_ctx_per_seq": max_sequence_tokens} if max_sequence_tokens else {})))


def local_model_dir(spec: str, *, models_dir: str | os.PathLike[str]) -> Path:
    """The Hugging Face directory of a ``local:`` spec (building or converting a bundled model on first use).
    Training (distill, eval) needs local weights, so any other spec is a ProcmemError."""
    kind, _, rest = spec.strip().partition(":")
    if kind != "local" or not rest.strip():
        raise ProcmemError(f"{spec!r} is not a local model: training needs local weights", where="model",
                           fix="use local:default, local:tiny or local:/path/to/hf_dir")
    return _local_dir(spec, rest.strip(), Path(models_dir))[0]


def _local_dir(spec: str, rest: str, models_dir: Path) -> tuple[Path, str]:
    name = _built_in(rest)[0]  # a precision suffix names llama.cpp weights; transformers runs fp32
    if name == "default":
        return ensure_bundled_model(models_dir), BUNDLED_MODEL_ID
    if name == "tiny":
        return ensure_tiny_model(models_dir), "tiny"
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise ProcmemError(f"{spec}: no such model directory {path}", where="--model",
                           fix=f"use {MODEL_SPEC_FORMS}")
    if not (path / "config.json").is_file():
        raise ProcmemError(f"{spec}: {path} is not a Hugging Face model directory (no config.json)",
                           where="--model", fix=f"use {MODEL_SPEC_FORMS}")
    return path, path.resolve().name
