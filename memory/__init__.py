"""Procedural memory: episodes in a vector store, retrieved as worked examples before answering.

The agent's view::

    memory = open_memory(home.chroma, url=chroma_url)         # ExperienceMemory on Chroma + MiniLM
    retriever = ExperienceRetriever(memory)                   # or NoMemory() for --no-memory
    found = retriever.retrieve(task, k)                       # Retrieval(entry_ids, text)
    prompt = render_prompt(task.prompt, memory=found.text)    # procmem.core
    memory.record(episode)                                    # after solving

Layers: :mod:`.base` (protocols) ← :mod:`.embedding`, :mod:`.chroma_store`, :mod:`.numpy_store` (stores by
level) ← :mod:`.experiences` (the ``experience`` level) ← :mod:`.retrieval` (the seam and the renderer).
"""

from __future__ import annotations

import os
from pathlib import Path

from procmem.memory.base import (
    LEVELS,
    Embedder,
    Level,
    MemoryRecord,
    MemoryStore,
    Scalar,
    ScoredRecord,
    VectorMemoryStore,
)
from procmem.memory.chroma_store import ChromaStore
from procmem.memory.embedding import MINILM_DIM, HashingEmbedder, MiniLMEmbedder, default_embedder
from procmem.memory.experiences import EXPERIENCE, ExperienceMemory
from procmem.memory.numpy_store import InMemoryStore
from procmem.memory.retrieval import (
    DEFAULT_MAX_CHARS,
    ExperienceRetriever,
    NoMemory,
    Retrieval,
    Retriever,
    WorkedExample,
    fit_memory,
    render_memory,
)

__all__ = [
    "DEFAULT_MAX_CHARS",
    "EXPERIENCE",
    "LEVELS",
    "MINILM_DIM",
    "ChromaStore",
    "Embedder",
    "ExperienceMemory",
    "ExperienceRetriever",
    "HashingEmbedder",
    "InMemoryStore",
    "Level",
    "MemoryRecord",
    "MemoryStore",
    "MiniLMEmbedder",
    "NoMemory",
    "Retrieval",
    "Retriever",
    "Scalar",
    "ScoredRecord",
    "VectorMemoryStore",
    "WorkedExample",
    "default_embedder",
    "fit_memory",
    "open_memory",
    "render_memory",
]


def open_memory(
    chroma_dir: str | os.PathLike[str], *, url: str | None = None, embedder: Embedder | None = None
) -> ExperienceMemory:
    """The CLI's memory: Chroma in ``chroma_dir``, or the server at ``url`` when given; embeddings by the
    process-wide MiniLM unless ``embedder`` is given. Raises ProcmemError on an unusable directory or URL."""
    embedder = embedder or default_embedder()
    store = ChromaStore.remote(url, embedder) if url else ChromaStore.embedded(Path(chroma_dir), embedder)
    return ExperienceMemory(store)
