"""Checks and helpers shared by the store implementations."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from procmem.memory.base import LEVELS, Embedder, Level, MemoryRecord, MetadataChange, Scalar, matches

__all__ = ["RESERVED_PREFIX", "as_matrix", "as_vector", "check_level", "check_metadata", "check_record", "check_where",
           "embedder_identity", "last_per_id", "matches", "set_metadata", "unique"]

RESERVED_PREFIX = "_procmem"
"""Metadata keys starting with this are the stores' own (e.g. the payload JSON)."""


def check_level(level: str) -> Level:
    if level not in LEVELS:
        raise ValueError(f"unknown memory level {level!r}; levels are {', '.join(LEVELS)}")
    return level


def check_record(record: MemoryRecord) -> str:
    """Validate a record for storage; returns its payload as JSON."""
    check_level(record.level)
    if not record.id:
        raise ValueError("a MemoryRecord needs a non-empty id")
    check_metadata(record.metadata)
    try:
        return json.dumps(record.payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"payload of record {record.id!r} is not JSON: {err}") from err


def check_metadata(metadata: Mapping[str, Any]) -> dict[str, Scalar]:
    """Metadata must be flat scalars under keys that are not reserved; returns a copy."""
    for key, value in metadata.items():
        if key.startswith(RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} is reserved (prefix {RESERVED_PREFIX!r})")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"metadata {key!r} must be a str, int, float or bool, got {type(value).__name__}")
    return dict(metadata)


def check_where(where: Mapping[str, Scalar] | None) -> dict[str, Scalar]:
    where = dict(where or {})
    for key, value in where.items():
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"where[{key!r}] must be a str, int, float or bool, got {type(value).__name__}")
    return where


def last_per_id(records: Sequence[MemoryRecord]) -> list[int]:
    """Indices of the records to write when an id repeats at one level in one batch: the last one wins."""
    last = {(record.level, record.id): i for i, record in enumerate(records)}
    return sorted(last.values())


def set_metadata(values: Mapping[str, Scalar]) -> MetadataChange:
    """A :data:`~procmem.memory.base.MetadataChange` that sets the same ``values`` on every record."""
    return lambda _record: values


def unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def as_matrix(vectors: npt.ArrayLike, rows: int, embedder: Embedder) -> npt.NDArray[np.float32]:
    """Check precomputed vectors against the embedder's dim; returns a float32 ``(rows, dim)`` array."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape != (rows, embedder.dim):
        raise ValueError(f"expected vectors of shape ({rows}, {embedder.dim}), got {matrix.shape}")
    return matrix


def as_vector(vector: npt.ArrayLike, embedder: Embedder) -> npt.NDArray[np.float32]:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    if array.shape != (embedder.dim,):
        raise ValueError(f"expected a vector of {embedder.dim} floats, got shape {array.shape}")
    return array


def embedder_identity(embedder: Embedder) -> str:
    """What a store records about the embedder that built it: its name and dimension."""
    return f"{getattr(embedder, 'name', type(embedder).__name__)}/{embedder.dim}"
