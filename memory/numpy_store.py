"""A memory store held in process memory, searched by exact (brute-force) cosine similarity with numpy.

It is the second :class:`~procmem.memory.base.MemoryStore` implementation and the benchmark baseline:
exact search over 100k 384-d vectors is one matrix-vector product. Nothing is persisted.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from procmem.memory._records import (
    as_matrix,
    as_vector,
    check_level,
    check_metadata,
    check_record,
    check_where,
    last_per_id,
    matches,
    unique,
)
from procmem.memory.base import (
    DistinctIndex,
    Embedder,
    Level,
    MemoryRecord,
    MetadataChange,
    Scalar,
    ScoredRecord,
    VectorStoreBase,
)
from procmem.memory.embedding import embed_array

__all__ = ["InMemoryStore"]

_WhereKey = tuple[tuple[str, str, Scalar], ...]
_Group = tuple[str, Scalar]
_Posting = tuple[str, str, Scalar]
_MASKS = 64
"""Filters whose matching rows a level keeps (each write updates them all)."""


@dataclass
class _Entry:
    id: str
    text: str
    metadata: dict[str, Scalar]
    payload_json: str

    def record(self, level: Level) -> MemoryRecord:
        # Payloads go through JSON, as in Chroma, so callers get a fresh copy with the same typing.
        return MemoryRecord(id=self.id, level=level, text=self.text, metadata=dict(self.metadata),
                            payload=json.loads(self.payload_json))


@dataclass
class _Groups:
    """A :class:`~procmem.memory.base.DistinctIndex` over one table: the ids in each group and each group's
    representative (its smallest id), kept up to date by every write."""

    index: DistinctIndex
    members: dict[_Group, set[str]] = field(default_factory=dict)
    reps: dict[_Group, str] = field(default_factory=dict)
    rows: tuple[int, npt.NDArray[np.intp]] | None = None
    """The representatives' rows, and the table's version they were read at."""

    def add(self, entry: _Entry) -> None:
        group = self.index.group(entry.metadata)
        if group is not None:
            self.members.setdefault(group, set()).add(entry.id)
            rep = self.reps.get(group)
            if rep is None or entry.id < rep:
                self.reps[group] = entry.id

    def remove(self, entry: _Entry) -> None:
        group = self.index.group(entry.metadata)
        if group is None or group not in self.members:
            return
        ids = self.members[group]
        ids.discard(entry.id)
        if not ids:
            del self.members[group], self.reps[group]
        elif self.reps[group] == entry.id:
            self.reps[group] = min(ids)


@dataclass
class _Table:
    """One level: entries and their vectors in matching rows (a growing buffer)."""

    dim: int
    entries: list[_Entry] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    buffer: npt.NDArray[np.float32] = field(init=False)
    masks: OrderedDict[_WhereKey, npt.NDArray[np.bool_]] = field(default_factory=OrderedDict)
    """The rows each recent filter matches, most recently used last (at most :data:`_MASKS`)."""
    groups: dict[str, _Groups] = field(default_factory=dict)
    """The distinct indexes searched so far, by spec (built on first use, then kept by every write)."""
    version: int = 0
    """Counts the writes that moved rows or changed a group."""
    postings: dict[_Posting, set[str]] = field(default_factory=dict)
    """The ids of the entries holding each metadata value: a new filter's rows without reading every entry."""

    def __post_init__(self) -> None:
        self.buffer = np.zeros((16, self.dim), dtype=np.float32)

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        return self.buffer[: len(self.entries)]

    def put(self, entry: _Entry, vector: npt.NDArray[np.float32]) -> None:
        self.version += 1
        row = self.rows.get(entry.id)
        if row is None:
            row = len(self.entries)
            if row == len(self.buffer):
                self.buffer = np.concatenate([self.buffer, np.zeros_like(self.buffer)])
            self.entries.append(entry)
            self.rows[entry.id] = row
            self._post(entry, add=True)
            for key, mask in self.masks.items():
                self.masks[key] = np.append(mask, matches(entry.metadata, _where(key)))
            for groups in self.groups.values():
                groups.add(entry)
        else:
            self.replace(row, entry)
        self.buffer[row] = vector

    def replace(self, row: int, entry: _Entry) -> None:
        """Put ``entry`` in ``row`` (same id, new metadata); the cached masks and groups follow."""
        self.version += 1
        for groups in self.groups.values():
            groups.remove(self.entries[row])
            groups.add(entry)
        self._post(self.entries[row], add=False)
        self._post(entry, add=True)
        self.entries[row] = entry
        for key, mask in self.masks.items():
            mask[row] = matches(entry.metadata, _where(key))

    def remove(self, entry_id: str) -> None:
        row = self.rows.pop(entry_id, None)
        if row is None:
            return
        self.version += 1
        for groups in self.groups.values():
            groups.remove(self.entries[row])
        self._post(self.entries[row], add=False)
        last = len(self.entries) - 1
        if row != last:  # move the last row into the hole
            self.entries[row] = self.entries[last]
            self.buffer[row] = self.buffer[last]
            self.rows[self.entries[row].id] = row
        self.entries.pop()
        for key, mask in self.masks.items():
            mask[row] = mask[last]
            self.masks[key] = mask[:last].copy()

    def mask(self, where: Mapping[str, Scalar]) -> npt.NDArray[np.bool_]:
        """Which rows match ``where`` (computed once per filter, then kept up to date by every write)."""
        key = tuple(sorted((k, type(v).__name__, v) for k, v in where.items()))
        if key not in self.masks:
            ids = set.intersection(*sorted((self.postings.get(_posting(k, v), set()) for k, v in where.items()),
                                           key=len))
            mask = np.zeros(len(self.entries), dtype=bool)
            mask[np.fromiter((self.rows[i] for i in ids), dtype=np.intp, count=len(ids))] = True
            self.masks[key] = mask
            while len(self.masks) > _MASKS:
                self.masks.popitem(last=False)
        self.masks.move_to_end(key)
        return self.masks[key]

    def _post(self, entry: _Entry, *, add: bool) -> None:
        for name, value in entry.metadata.items():
            posting = _posting(name, value)
            if add:
                self.postings.setdefault(posting, set()).add(entry.id)
            elif posting in self.postings:
                self.postings[posting].discard(entry.id)
                if not self.postings[posting]:
                    del self.postings[posting]

    def distinct(self, index: DistinctIndex) -> _Groups:
        """The groups of ``index`` (built on first use, then kept up to date by every write)."""
        spec = index.spec()
        if spec not in self.groups:
            groups = _Groups(index)
            for entry in self.entries:
                groups.add(entry)
            self.groups[spec] = groups
        return self.groups[spec]

    def representatives(self, index: DistinctIndex) -> npt.NDArray[np.intp]:
        """The rows of the representatives of ``index``'s groups (read again only after a write)."""
        groups = self.distinct(index)
        if groups.rows is None or groups.rows[0] != self.version:
            reps = groups.reps
            groups.rows = (self.version, np.fromiter((self.rows[i] for i in reps.values()), dtype=np.intp,
                                                     count=len(reps)))
        return groups.rows[1]


def _posting(name: str, value: Scalar) -> _Posting:
    """Where an entry with ``name: value`` is posted; typed as :func:`~procmem.memory.base.matches` compares (True is
    not 1, 1 is 1.0)."""
    kind = "bool" if isinstance(value, bool) else "num" if isinstance(value, int | float) else "str"
    return (name, kind, value)


def _dot(matrix: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``matrix @ vector`` on one thread: OpenBLAS hands a matrix-vector product to its threads, which on a busy
    2-core machine took ~11 ms whatever the size (measured); einsum's own loop takes 0.3 ms at 2,000 x 384."""
    return np.einsum("ij,j->i", matrix, vector)


def _where(key: _WhereKey) -> dict[str, Scalar]:
    return {name: value for name, _, value in key}


class InMemoryStore(VectorStoreBase):
    """:class:`~procmem.memory.base.VectorMemoryStore` in process memory, with exact cosine search.

    Thread-safe. Records come back as copies; payloads round-trip through JSON (tuples become lists).
    """

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._tables: dict[Level, _Table] = {}
        self._lock = threading.RLock()

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        records = [records[i] for i in last_per_id(records)]
        self.upsert_vectors(records, embed_array(self._embedder, [r.text for r in records]))

    def upsert_vectors(self, records: Sequence[MemoryRecord], vectors: npt.ArrayLike) -> None:
        matrix = as_matrix(vectors, len(records), self._embedder)
        payloads = [check_record(record) for record in records]
        with self._lock:
            for record, payload, vector in zip(records, payloads, matrix, strict=True):
                entry = _Entry(record.id, record.text, dict(record.metadata), payload)
                self._table(record.level).put(entry, vector)

    def update(self, level: Level, ids: Sequence[str], change: MetadataChange) -> list[MemoryRecord]:
        with self._lock:
            table = self._table(level)
            rows = [table.rows[i] for i in unique(ids) if i in table.rows]
            changes = [check_metadata(change(table.entries[row].record(level)) or {}) for row in rows]
            for row, new in zip(rows, changes, strict=True):
                if new:
                    entry = table.entries[row]
                    table.replace(row, _Entry(entry.id, entry.text, {**entry.metadata, **new}, entry.payload_json))
            return [table.entries[row].record(level) for row in rows]

    def get(self, level: Level, ids: Sequence[str]) -> list[MemoryRecord]:
        with self._lock:
            table = self._table(level)
            return [table.entries[table.rows[i]].record(level) for i in unique(ids) if i in table.rows]

    def delete(self, level: Level, ids: Sequence[str]) -> None:
        with self._lock:
            table = self._table(level)
            for entry_id in ids:
                table.remove(entry_id)

    def query_vector(
        self, level: Level, vector: npt.ArrayLike, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]:
        query = as_vector(vector, self._embedder)
        where = check_where(where)
        with self._lock:
            table = self._table(level)
            if k <= 0 or not table.entries:
                return []
            similarity = _dot(table.vectors, query)
            candidates = np.flatnonzero(table.mask(where)) if where else np.arange(len(table.entries))
            if len(candidates) > k:
                top = np.argpartition(-similarity[candidates], k - 1)[:k]
                candidates = candidates[top]
            ranked = sorted(candidates.tolist(), key=lambda row: (-similarity[row], row))
            return [ScoredRecord(table.entries[row].record(level), float(similarity[row])) for row in ranked]

    def query_distinct(self, index: DistinctIndex, vector: npt.ArrayLike, *, k: int) -> list[ScoredRecord]:
        """Exact: the ``k`` groups whose representatives (smallest ids) are nearest; one matrix-vector product over
        the representatives."""
        query = as_vector(vector, self._embedder)
        with self._lock:
            table = self._table(index.level)
            rows = table.representatives(index)
            if k <= 0 or not len(rows):
                return []
            similarity = _dot(table.vectors, query)[rows]
            top = np.argpartition(-similarity, k - 1)[:k] if len(rows) > k else np.arange(len(rows))
            ranked = sorted(top.tolist(), key=lambda i: (-similarity[i], rows[i]))
            return [ScoredRecord(table.entries[rows[i]].record(index.level), float(similarity[i])) for i in ranked]

    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]:
        where = check_where(where)
        with self._lock:
            table = self._table(level)
            rows = np.flatnonzero(table.mask(where)) if where else range(len(table.entries))
            entries = [table.entries[row] for row in rows]
        return (entry.record(level) for entry in entries)

    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int:
        where = check_where(where)
        with self._lock:
            table = self._table(level)
            return int(table.mask(where).sum()) if where else len(table.entries)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            yield

    def close(self) -> None:
        """Nothing to release; present for :class:`~procmem.memory.base.VectorMemoryStore`."""

    def _table(self, level: Level) -> _Table:
        check_level(level)
        if level not in self._tables:
            self._tables[level] = _Table(self._embedder.dim)
        return self._tables[level]
