"""The memory seams: an embedding function, and a store of embedded records.

memory/ knows nothing about models beyond :class:`Embedder`.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy.typing as npt

__all__ = [
    "EXAMPLES",
    "INDEXES",
    "LEVELS",
    "PROBLEMS",
    "DistinctIndex",
    "Embedder",
    "Level",
    "MemoryRecord",
    "MemoryStore",
    "MetadataChange",
    "Scalar",
    "ScoredRecord",
    "VectorMemoryStore",
    "VectorStoreBase",
    "search_distinct",
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


def matches(metadata: Mapping[str, Any], where: Mapping[str, Scalar]) -> bool:
    """Equality filter with the same typing as Chroma: True never equals 1."""
    for key, want in where.items():
        if key not in metadata:
            return False
        got = metadata[key]
        if isinstance(got, bool) != isinstance(want, bool) or got != want:
            return False
    return True


@dataclass(frozen=True)
class DistinctIndex:
    """A derived index of one level: of the records of ``level`` whose metadata matches ``where`` and holds ``key``,
    one per value of ``key`` (the group's representative). One search of it finds ``k`` records with ``k`` different
    values, however many records share a value (repeated solves of one problem) and however few records match.

    A store that keeps the index (:class:`~procmem.memory.ChromaStore`, :class:`~procmem.memory.InMemoryStore`)
    takes the smallest id of each group as its representative and follows every write; others answer
    :meth:`VectorMemoryStore.query_distinct` with :func:`search_distinct`, whose representative is the group's
    nearest record."""

    name: str
    """Names the index (Chroma keeps it as the collection ``procmem_index_<name>``)."""
    level: Level
    where: Mapping[str, Scalar]
    key: str

    def group(self, metadata: Mapping[str, Any] | None) -> tuple[str, Scalar] | None:
        """The group of a record with this metadata: ``(type name, value of key)`` (so that True and 1 differ), or None
        when the record is not in the index."""
        if metadata is None or self.key not in metadata or not matches(metadata, self.where):
            return None
        value = metadata[self.key]
        return (type(value).__name__, value) if isinstance(value, str | int | float | bool) else None

    def spec(self) -> str:
        """What the index holds, as text: a store that finds another spec under the same name rebuilds it."""
        where = sorted((key, type(value).__name__, value) for key, value in self.where.items())
        return json.dumps({"level": self.level, "where": where, "key": self.key}, sort_keys=True)


PROBLEMS = DistinctIndex("problems", "experience", {"split": "train"}, "problem")
"""Train-split episodes, one per problem: the nearest problems, whose insights a task gets."""

EXAMPLES = DistinctIndex("examples", "experience", {"passed": True, "split": "train"}, "problem")
"""Verified train-split successes, one per problem: the worked examples a task gets."""

INDEXES: tuple[DistinctIndex, ...] = (PROBLEMS, EXAMPLES)
"""The derived indexes the agent's retrieval searches; the stores that keep indexes keep these."""


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

    def query_distinct(self, index: DistinctIndex, vector: npt.ArrayLike, *, k: int) -> list[ScoredRecord]:
        """The ``k`` records of ``index`` nearest to ``vector``, one per group (see :class:`DistinctIndex`),
        nearest first. A store that keeps the index answers with one search; the others with
        :func:`search_distinct` (what :class:`VectorStoreBase` does unless a subclass overrides it)."""
        ...

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

    def query_distinct(self, index: DistinctIndex, vector: npt.ArrayLike, *, k: int) -> list[ScoredRecord]:
        """The ``k`` records of ``index`` nearest to ``vector``, one per group, nearest first: by default
        :func:`search_distinct` (filtered searches, widened until ``k`` groups are found); override it with one
        search of an index the store keeps."""
        return search_distinct(self, index, vector, k=k)

    @abstractmethod
    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]: ...

    @abstractmethod
    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int: ...

    @abstractmethod
    def exclusive(self) -> AbstractContextManager[None]: ...

    def reading(self) -> AbstractContextManager[None]:
        """Optional: a section that groups several reads (the agent's retrieval opens one around its store calls), for a
        store whose calls each pay a fixed cost (a lock, a round trip). By default nothing."""
        return contextlib.nullcontext()

    @abstractmethod
    def close(self) -> None: ...


def search_distinct(store: VectorMemoryStore | VectorStoreBase, index: DistinctIndex, vector: npt.ArrayLike, *,
                    k: int) -> list[ScoredRecord]:
    """:meth:`VectorMemoryStore.query_distinct` for a store that does not keep ``index``: filtered searches of the
    level, four times wider each time, until ``k`` groups are among the hits (or the level has no more); each group
    is represented by its nearest record."""
    if k <= 0:
        return []
    fetch = 2 * k + 4
    while True:
        hits = store.query_vector(index.level, vector, k=fetch, where=index.where)
        chosen: dict[tuple[str, Scalar], ScoredRecord] = {}
        for hit in hits:
            group = index.group(hit.record.metadata)
            if group is not None:
                chosen.setdefault(group, hit)
                if len(chosen) == k:
                    return list(chosen.values())
        if len(hits) < fetch:
            return list(chosen.values())
        fetch *= 4
