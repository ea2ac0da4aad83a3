"""Procedural memory: experiences → insights → patterns in a vector store, with hygiene and co-evolution.

The agent's view::

    memory = open_memory(home.chroma, url=chroma_url)          # ProceduralMemory on Chroma + MiniLM
    retriever = memory.retriever(policy=policy_version(llm))   # or NoMemory() for --no-memory
    found = retriever.retrieve(task, k)                        # Retrieval(entry_ids, text)
    prompt = render_prompt(task.prompt, memory=found.text)     # procmem.core
    memory.after_episode(episode, reflector=llm)               # record, count, reflect inline

This package exports what a user calls (``__all__``): the memory (:func:`open_memory`,
:class:`ProceduralMemory`, :class:`MemoryConfig`), the store seam (:class:`MemoryStore`,
:class:`VectorMemoryStore`, :class:`VectorStoreBase`, :class:`MemoryRecord`, :class:`DistinctIndex`, ...) with its
two stores (:class:`ChromaStore`, :class:`InMemoryStore`), the embedder seam (:class:`Embedder`,
:class:`HashingEmbedder`, :func:`default_embedder`) and the retrieval seam (:class:`Retriever`,
:class:`Retrieval`, :class:`NoMemory`).

Public modules are the ones you configure or plug into: :mod:`.base` (the store seam and :data:`Scalar`),
:mod:`.config` (:class:`MemoryConfig` and its sections), :mod:`.embedding` (``MiniLMEmbedder``,
``LlamaCppEmbedder``), :mod:`.chroma_store` (``HNSW``, ``local_chroma_server``) and :mod:`.numpy_store`. The
``_``-prefixed modules are the machinery, internal to procmem.

Layers: :mod:`.base` (protocols, and :class:`VectorStoreBase` for stores) ← :mod:`.embedding`,
:mod:`.chroma_store`, :mod:`.numpy_store` (stores by level) ← :mod:`._experiences` (level 1) ←
:mod:`._entries`, :mod:`._problems`, :mod:`._reflection`, :mod:`._consolidation`, :mod:`._feedback_lessons`
(levels 2-3) ← :mod:`._hygiene` (the rules, and writes and eviction that apply them) ← :mod:`._retrieval`
(the seam, every retriever and THE renderer), :mod:`._learning` (reflection and consolidation jobs),
:mod:`._transfer` (export/import) ← :mod:`._procedural` (the facade over all of it).
"""

from __future__ import annotations

import os
from pathlib import Path

from procmem.memory._learning import ReflectionReport
from procmem.memory._procedural import ProceduralMemory
from procmem.memory._retrieval import NoMemory, Retrieval, Retriever
from procmem.memory.base import (
    LEVELS,
    DistinctIndex,
    Embedder,
    Level,
    MemoryRecord,
    MemoryStore,
    MetadataChange,
    ScoredRecord,
    VectorMemoryStore,
    VectorStoreBase,
)
from procmem.memory.chroma_store import ChromaStore
from procmem.memory.config import MemoryConfig
from procmem.memory.embedding import HashingEmbedder, default_embedder
from procmem.memory.numpy_store import InMemoryStore

__all__ = [
    "LEVELS",
    "ChromaStore",
    "DistinctIndex",
    "Embedder",
    "HashingEmbedder",
    "InMemoryStore",
    "Level",
    "MemoryConfig",
    "MemoryRecord",
    "MemoryStore",
    "MetadataChange",
    "NoMemory",
    "ProceduralMemory",
    "ReflectionReport",
    "Retrieval",
    "Retriever",
    "ScoredRecord",
    "VectorMemoryStore",
    "VectorStoreBase",
    "default_embedder",
    "open_memory",
]


def open_memory(
    chroma_dir: str | os.PathLike[str], *, url: str | None = None, embedder: Embedder | None = None,
    config: MemoryConfig | None = None,
) -> ProceduralMemory:
    """The CLI's memory: Chroma in ``chroma_dir``, or the server at ``url`` when given; embeddings by the
    process-wide MiniLM unless ``embedder`` is given. Raises ProcmemError on an unusable directory or URL.

    A :class:`ProceduralMemory` is also an :class:`ExperienceMemory` (``record``, ``episodes``, ``stats``).
    """
    embedder = embedder or default_embedder()
    store = ChromaStore.remote(url, embedder) if url else ChromaStore.embedded(Path(chroma_dir), embedder)
    return ProceduralMemory(store, config)
