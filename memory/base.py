"""The memory seams: an embedding function, and a store of embedded records.

memory/ knows nothing about models beyond :class:`Embedder`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy.typing as npt

__all__ = [
    "LEVELS",
    "Embedder",
    "Level",
    "MemoryRecord",
    "MemoryStore",
    "MetadataChange",
    "Scalar",
    "ScoredRecord",
    "VectorMemoryStore",
    "VectorStoreBase",
]

Level = Literal["experience", "insight", "pattern"]
Scalar = str | int | float | bool

LEVELS: tuple[Level, ...] = get_args(Level)
"""Every memory level, in order of abstraction."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors of size ``dim``."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@dataclass(frozen=True)
class MemoryRecord:
    """One stored entry at one level.

    ``text`` is what gets embedded and searched; ``metadata`` holds flat, filterable scalars
    (split, suite, passed, status, ...); ``payload`` holds the full JSON document (e.g. an episode).
    """

    id: str
    level: Level
    text: str
    metadata: Mapping[str, Scalar] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)


MetadataChange = Callable[[MemoryRecord], Mapping[str, Scalar] | None]
"""Given a stored record, the metadata keys to set on it (None or {}: leave it as it is)."""


@dataclass(frozen=True)
class ScoredRecord:
    record: MemoryRecord
    similarity: float
    """Cosine similarity to the query, in [-1, 1]; higher is closer."""


@runtime_checkable
class MemoryStore(Protocol):
    """A vector store of :class:`MemoryRecord`, one namespace per level.

    ``where`` is an equality filter on metadata keys (all must match). Writes are upserts by id.
    """

    def upsert(self, records: Sequence[MemoryRecord]) -> None: ...

    def update(self, level: Level, ids: Sequence[str], change: MetadataChange) -> list[MemoryRecord]:
        """Read-modify-write the metadata of the existing records among ``ids`` (counters, status).

        ``change`` sees each current record and returns the keys to set; text, vector and payload stay.
        Atomic: no other writer of the memory runs in between (a thread lock in memory, a file lock across
        processes for the embedded store, a lease lock on the server for a Chroma server). Returns the
        records as they are now.
        """
        ...

    def get(self, level: Level, ids: Sequence[str]) -> list[MemoryRecord]: ...

    def delete(self, level: Level, ids: Sequence[str]) -> None: ...

    def query(
        self, level: Level, text: str, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]: ...

    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]: ...

    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int: ...


@runtime_checkable
class VectorMemoryStore(MemoryStore, Protocol):
    """A :class:`MemoryStore` that also takes and answers with precomputed vectors (bulk imports,
    benchmarks), and holds resources to release with :meth:`close`.

    Vectors must come from the store's own ``embedder`` (same model, same ``dim``, unit length).
    """

    @property
    def embedder(self) -> Embedder: ...

    def upsert_vectors(self, records: Sequence[MemoryRecord], vectors: npt.ArrayLike) -> None: ...

    def query_vector(
        self, level: Level, vector: npt.ArrayLike, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]: ...

    def exclusive(self) -> AbstractContextManager[None]:
        """A section in which no other writer of this store runs: a read-then-write inside it (a merge on
        write) cannot lose a concurrent update. Reentrant. Across processes for the embedded store; across
        processes and hosts for a Chroma server (a lease lock kept on the server)."""
        ...

    def close(self) -> None: ...


class VectorStoreBase(ABC):
    """A base class for a :class:`VectorMemoryStore`: it writes :meth:`query` once (embed the text with the
    store's own ``embedder``, then :meth:`query_vector`), and leaves every other method to the subclass.

    Subclass it to write a store of your own, and check it with
    :class:`procmem.testing.MemoryStoreConformance` (docs: *Extend procmem*).
    """

    @property
    @abstractmethod
    def embedder(self) -> Embedder: ...

    @abstractmethod
    def upsert(self, records: Sequence[MemoryRecord]) -> None: ...

    @abstractmethod
    def upsert_vectors(self, records: Sequence[MemoryRecord], vectors: npt.ArrayLike) -> None: ...

    @abstractmethod
    def update(self, level: Level, ids: Sequence[str], change: MetadataChange) -> list[MemoryRecord]: ...

    @abstractmethod
    def get(self, level: Level, ids: Sequence[str]) -> list[MemoryRecord]: ...

    @abstractmethod
    def delete(self, level: Level, ids: Sequence[str]) -> None: ...

    def query(
        self, level: Level, text: str, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]:
        """The ``k`` records of ``level`` (matching ``where``) nearest to ``text``, nearest first."""
        return self.query_vector(level, self.embedder.embed([text])[0], k=k, where=where)

    @abstractmethod
    def query_vector(
        self, level: Level, vector: npt.ArrayLike, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]: ...

    @abstractmethod
    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]: ...

    @abstractmethod
    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int: ...

    @abstractmethod
    def exclusive(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def close(self) -> None: ...
