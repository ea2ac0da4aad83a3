"""A store written here, as a user would write one, passes procmem.testing's store conformance suite; and the
suite fails a store that breaks the contract."""

from __future__ import annotations

# --8<-- [start:store]
import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from procmem.memory import (
    LEVELS,
    Embedder,
    HashingEmbedder,
    Level,
    MemoryRecord,
    MetadataChange,
    ScoredRecord,
    VectorStoreBase,
)
from procmem.memory.base import Scalar
from procmem.testing import MemoryStoreConformance


def _scalars(values: Mapping[str, Any], what: str) -> dict[str, Scalar]:
    for key, value in values.items():
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"{what} {key!r} must be a str, int, float or bool")
    return dict(values)


def _same(got: Scalar, want: Scalar) -> bool:
    return isinstance(got, bool) == isinstance(want, bool) and got == want


class DictStore(VectorStoreBase):
    """Records in a dict per level, searched by exact cosine similarity; ``query`` comes from the base class."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._rows: dict[str, dict[str, tuple[MemoryRecord, npt.NDArray[np.float32]]]] = {lv: {} for lv in LEVELS}
        self._lock = threading.RLock()

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _level(self, level: str) -> dict[str, tuple[MemoryRecord, npt.NDArray[np.float32]]]:
        if level not in self._rows:
            raise ValueError(f"unknown level {level!r}")
        return self._rows[level]

    @staticmethod
    def _check(record: MemoryRecord) -> MemoryRecord:
        if not record.id or record.level not in LEVELS:
            raise ValueError(f"bad id or level in {record!r}")
        if any(key.startswith("_procmem") for key in record.metadata):
            raise ValueError("metadata keys starting with _procmem are reserved")
        payload = json.loads(json.dumps(record.payload, allow_nan=False))  # raises ValueError or TypeError
        return MemoryRecord(record.id, record.level, record.text, _scalars(record.metadata, "metadata"), payload)

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        self.upsert_vectors(records, self._embedder.embed([r.text for r in records]))

    def upsert_vectors(self, records: Sequence[MemoryRecord], vectors: npt.ArrayLike) -> None:
        if not records:
            return
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.shape != (len(records), self._embedder.dim):
            raise ValueError(f"expected vectors of shape ({len(records)}, {self._embedder.dim}), got {matrix.shape}")
        try:
            checked = [self._check(r) for r in records]  # all checked before any is written
        except TypeError as err:
            raise ValueError(str(err)) from err
        with self._lock:
            for record, vector in zip(checked, matrix, strict=True):
                self._level(record.level)[record.id] = (record, vector)

    def update(self, level: Level, ids: Sequence[str], change: MetadataChange) -> list[MemoryRecord]:
        with self._lock:
            rows = self._level(level)
            found = [rows[i][0] for i in dict.fromkeys(ids) if i in rows]
            changes = [_scalars(change(record) or {}, "metadata") for record in found]  # all checked first
            if any(key.startswith("_procmem") for new in changes for key in new):
                raise ValueError("metadata keys starting with _procmem are reserved")
            updated = [MemoryRecord(r.id, level, r.text, {**r.metadata, **new}, r.payload)
                       for r, new in zip(found, changes, strict=True)]
            for record in updated:
                rows[record.id] = (record, rows[record.id][1])
            return updated

    def get(self, level: Level, ids: Sequence[str]) -> list[MemoryRecord]:
        with self._lock:
            rows = self._level(level)
            return [rows[i][0] for i in dict.fromkeys(ids) if i in rows]

    def delete(self, level: Level, ids: Sequence[str]) -> None:
        with self._lock:
            for entry_id in ids:
                self._level(level).pop(entry_id, None)

    def query_vector(self, level: Level, vector: npt.ArrayLike, *, k: int,
                     where: Mapping[str, Scalar] | None = None) -> list[ScoredRecord]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (self._embedder.dim,):
            raise ValueError("a query vector of the wrong size")
        hits = [ScoredRecord(record, float(row @ query)) for record, row in self._matching(level, where)]
        return sorted(hits, key=lambda h: -h.similarity)[:max(k, 0)]

    def _matching(self, level: Level, where: Mapping[str, Scalar] | None
                  ) -> list[tuple[MemoryRecord, npt.NDArray[np.float32]]]:
        want = _scalars(where or {}, "where")
        with self._lock:
            return [(record, row) for record, row in self._level(level).values()
                    if all(key in record.metadata and _same(record.metadata[key], value)
                           for key, value in want.items())]

    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]:
        return iter([record for record, _ in self._matching(level, where)])

    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int:
        return len(self._matching(level, where))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            yield

    def close(self) -> None:
        pass


class TestDictStore(MemoryStoreConformance):
    @pytest.fixture
    def store(self, embedder: HashingEmbedder) -> DictStore:
        return DictStore(embedder)
# --8<-- [end:store]


class _NoFilterStore(DictStore):
    """Breaks the contract: ``where`` is ignored by every read."""

    def _matching(self, level: Level, where: Mapping[str, Scalar] | None
                  ) -> list[tuple[MemoryRecord, npt.NDArray[np.float32]]]:
        return super()._matching(level, None)


def test_the_suite_fails_a_store_that_ignores_filters() -> None:
    suite = TestDictStore()
    store = _NoFilterStore(HashingEmbedder())
    with pytest.raises(AssertionError):
        suite.test_query_filters_on_metadata_equality(store)


def test_query_comes_from_the_base_class_and_searches_by_the_embedded_text() -> None:
    assert "query" not in DictStore.__dict__
    store = DictStore(HashingEmbedder())
    store.upsert([MemoryRecord(id="a", level="insight", text="Reverse the words."),
                  MemoryRecord(id="b", level="insight", text="What is 3 + 4?")])
    (hit,) = store.query("insight", "What is 3 + 4?", k=1)
    assert hit.record.id == "b" and hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_a_store_missing_a_method_cannot_be_made() -> None:
    class Partial(VectorStoreBase):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Partial()
