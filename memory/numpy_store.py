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
class _Table:
    """One level: entries and their vectors in matching rows (a growing buffer)."""

    dim: int
    entries: list[_Entry] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    buffer: npt.NDArray[np.float32] = field(init=False)
    masks: OrderedDict[_WhereKey, npt.NDArray[np.bool_]] = field(default_factory=OrderedDict)
    """The rows each recent filter matches, most recently used last (at most :data:`_MASKS`)."""

    def __post_init__(self) -> None:
        self.buffer = np.zeros((16, self.dim), dtype=np.float32)

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        return self.buffer[: len(self.entries)]

    def put(self, entry: _Entry, vector: npt.NDArray[np.float32]) -> None:
        row = self.rows.get(entry.id)
        if row is None:
            row = len(self.entries)
            if row == len(self.buffer):
                self.buffer = np.concatenate([self.buffer, np.zeros_like(self.buffer)])
            self.entries.append(entry)
            self.rows[entry.id] = row
            for key, mask in self.masks.items():
                self.masks[key] = np.append(mask, matches(entry.metadata, _where(key)))
        else:
            self.replace(row, entry)
        self.buffer[row] = vector

    def replace(self, row: int, entry: _Entry) -> None:
        """Put ``entry`` in ``row`` (same id, new metadata); the cached masks follow."""
        self.entries[row] = entry
        for key, mask in self.masks.items():
            mask[row] = matches(entry.metadata, _where(key))

    def remove(self, entry_id: str) -> None:
        row = self.rows.pop(entry_id, None)
        if row is None:
            return
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
            self.masks[key] = np.fromiter((matches(e.metadata, where) for e in self.entries), dtype=bool,
                                          count=len(self.entries))
            while len(self.masks) > _MASKS:
                self.masks.popitem(last=False)
        self.masks.move_to_end(key)
        return self.masks[key]


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
            similarity = table.vectors @ query
            candidates = np.flatnonzero(table.mask(where)) if where else np.arange(len(table.entries))
            if len(candidates) > k:
                top = np.argpartition(-similarity[candidates], k - 1)[:k]
                candidates = candidates[top]
            ranked = sorted(candidates.tolist(), key=lambda row: (-similarity[row], row))
            return [ScoredRecord(table.entries[row].record(level), float(similarity[row])) for row in ranked]

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
