"""The llama.cpp MiniLM embedder: same vectors as sentence-transformers', and no torch on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from procmem.core.home import Home
from procmem.memory.embedding import MINILM_DIM, MINILM_GGUF_NAME, LlamaCppEmbedder, MiniLMEmbedder

pytest.importorskip("llama_cpp")

_SAMPLES = [
    "What is 3 + 4?", "hello", "", "Héllo wörld — naïve café ☕ 日本語のテキスト", "x" * 2000, "[CLS] hi [MASK] [cls]",
    "The quick brown fox " * 100, "Solve: 12*(3-7)/2 = ?", "emoji 😀🎉 test", "tabs\tand\nnewlines  ",
    "UPPER lower MiXeD", "über straße", "résumé", "ﬁ ligature", "Ⅻ roman", "a,b;c:d!e?f", "\u200bzero width",
    "Ελληνικά ΣΑΣ κείμενο", "русский текст", "مرحبا", "한국어 텍스트입니다", "ปลา", "中文文本" * 200,
    "word_with_underscores_" * 10, "İstanbul ǅ ß", "a\x00b\ufffdc\x07d", "1234567890" * 30,
    "$€£¥ 3.14159 -42 1e-9 0xFF",
]


def _texts() -> list[str]:
    rng = np.random.default_rng(0)
    mixed = [" ".join(_SAMPLES[i] for i in rng.choice(len(_SAMPLES), 3)) for _ in range(20)]
    questions = [f"Question {i}: what is {i} * {i + 3} modulo 7? Answer in one line." for i in range(60)]
    return _SAMPLES + mixed + questions


def test_llamacpp_vectors_match_sentence_transformers(tmp_path: Path) -> None:
    texts = _texts()
    assert len(texts) >= 100
    fast = LlamaCppEmbedder(models_dir=tmp_path).embed_array(texts)
    slow = MiniLMEmbedder().embed_array(texts)
    assert fast.shape == slow.shape == (len(texts), MINILM_DIM)
    cosines = (fast * slow).sum(axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= 0.999, f"{texts[worst][:60]!r}: cosine {cosines[worst]:.5f}"
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)


def test_llamacpp_embedder_writes_its_gguf_once_and_batches_like_single_texts(tmp_path: Path) -> None:
    embedder = LlamaCppEmbedder(models_dir=tmp_path, cache_size=0)
    texts = [f"text number {i} " * (i % 40 + 1) for i in range(30)]
    together = embedder.embed_array(texts)  # packed several texts per decode
    alone = np.stack([embedder.embed_array([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-4)
    cache = Path(os.environ.get("PROCMEM_MODELS_CACHE") or tmp_path)
    assert (cache / MINILM_GGUF_NAME).is_file()
    import gguf  # the layers' matrices in F16, the lookup tables, norms and biases in F32

    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(cache / MINILM_GGUF_NAME).tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["blk.5.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["token_embd.weight"] == kinds["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32


def test_default_embedder_does_not_import_torch(tmp_path: Path) -> None:
    code = ("import json, sys\n"
            "from procmem.memory import default_embedder\n"
            "e = default_embedder()\n"
            "v = e.embed(['What is 3 + 4?'])\n"
            "print(json.dumps([type(e).__name__, len(v[0]), 'torch' in sys.modules,"
            " 'sentence_transformers' in sys.modules]))\n")
    home = tmp_path / "home"
    env = {**os.environ, "PROCMEM_HOME": str(home)}
    env.pop("PROCMEM_EMBEDDER", None)
    env.pop("PROCMEM_MODELS_CACHE", None)  # the GGUF goes into the home's models, and the home stays a valid one
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    name, dim, torch_loaded, st_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (name, dim) == ("LlamaCppEmbedder", MINILM_DIM)
    assert not torch_loaded and not st_loaded
    assert (home / "models" / MINILM_GGUF_NAME).is_file()
    Home(home).ensure()
