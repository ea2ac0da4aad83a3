"""Memory fixtures: the real MiniLM embedder (loaded once per session, ~5 s) and a procedural memory on
real Chroma in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from procmem.memory import MemoryConfig, ProceduralMemory, default_embedder, open_memory
from procmem.memory.embedding import MiniLMEmbedder


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    """The process-wide all-MiniLM-L6-v2 (the one open_memory uses), warmed up."""
    embedder = default_embedder()
    embedder.embed(["warm up"])
    return embedder


@pytest.fixture
def pmem(minilm: MiniLMEmbedder, tmp_path: Path) -> Iterator[ProceduralMemory]:
    """A fresh ProceduralMemory with default settings on embedded Chroma."""
    memory = open_memory(tmp_path / "chroma", embedder=minilm, config=MemoryConfig())
    yield memory
    memory.close()
