"""Procedural memory: experiences → insights → patterns in a vector store, with hygiene and co-evolution.

The agent's view::

    memory = open_memory(home.chroma, url=chroma_url)          # ProceduralMemory on Chroma + MiniLM
    retriever = memory.retriever(policy=policy_version(llm))   # or NoMemory() for --no-memory
    found = retriever.retrieve(task, k)                        # Retrieval(entry_ids, text)
    prompt = render_prompt(task.prompt, memory=found.text)     # procmem.core
    memory.after_episode(episode, reflector=llm)               # record, count, reflect inline

Layers: :mod:`.base` (protocols) ← :mod:`.embedding`, :mod:`.chroma_store`, :mod:`.numpy_store` (stores by
level) ← :mod:`.experiences` (level 1) ← :mod:`.entries`, :mod:`.problems`, :mod:`.reflection`,
:mod:`.consolidation` (levels 2-3) ← :mod:`.hygiene` (the rules, and writes and eviction that apply them) ←
:mod:`.retrieval` (the seam, every retriever and THE renderer), :mod:`.learning` (reflection and
consolidation jobs), :mod:`.transfer` (export/import) ← :mod:`.procedural` (the facade over all of it).
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
    MetadataChange,
    Scalar,
    ScoredRecord,
    VectorMemoryStore,
)
from procmem.memory.chroma_store import ChromaStore, local_chroma_server
from procmem.memory.config import HygieneConfig, MemoryConfig, ReflectionConfig, RetrievalConfig
from procmem.memory.embedding import (
    MINILM_DIM,
    HashingEmbedder,
    LlamaCppEmbedder,
    MiniLMEmbedder,
    default_embedder,
)
from procmem.memory.entries import (
    ENTRY_LEVELS,
    KINDS,
    Entry,
    EntryLevel,
    Kind,
    Status,
    entry_id,
)
from procmem.memory.experiences import EXPERIENCE, ExperienceMemory
from procmem.memory.hygiene import PruneReport
from procmem.memory.learning import ReflectionReport
from procmem.memory.numpy_store import InMemoryStore
from procmem.memory.problems import Grouping, Problem, group_problems
from procmem.memory.procedural import AfterEpisode, ProceduralMemory
from procmem.memory.reflection import (
    ParsedItem,
    ParsedReflection,
    parse_reflection,
    pattern_prompt,
    reflection_primer,
    reflection_prompt,
)
from procmem.memory.retrieval import (
    ADVICE_HEADER,
    DEFAULT_MAX_CHARS,
    Advice,
    ExperienceRetriever,
    MemoryContext,
    NoMemory,
    ProceduralRetriever,
    Retrieval,
    Retriever,
    WorkedExample,
    fit_context,
    fit_memory,
    render_memory,
)

__all__ = [
    "ADVICE_HEADER",
    "DEFAULT_MAX_CHARS",
    "ENTRY_LEVELS",
    "EXPERIENCE",
    "KINDS",
    "LEVELS",
    "MINILM_DIM",
    "Advice",
    "AfterEpisode",
    "ChromaStore",
    "Embedder",
    "Entry",
    "EntryLevel",
    "ExperienceMemory",
    "ExperienceRetriever",
    "Grouping",
    "HashingEmbedder",
    "HygieneConfig",
    "InMemoryStore",
    "Kind",
    "Level",
    "LlamaCppEmbedder",
    "MemoryConfig",
    "MemoryContext",
    "MemoryRecord",
    "MemoryStore",
    "MetadataChange",
    "MiniLMEmbedder",
    "NoMemory",
    "ParsedItem",
    "ParsedReflection",
    "Problem",
    "ProceduralMemory",
    "ProceduralRetriever",
    "PruneReport",
    "ReflectionConfig",
    "ReflectionReport",
    "Retrieval",
    "RetrievalConfig",
    "Retriever",
    "Scalar",
    "ScoredRecord",
    "Status",
    "VectorMemoryStore",
    "WorkedExample",
    "default_embedder",
    "entry_id",
    "fit_context",
    "fit_memory",
    "group_problems",
    "local_chroma_server",
    "open_memory",
    "parse_reflection",
    "pattern_prompt",
    "reflection_primer",
    "reflection_prompt",
    "render_memory",
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
