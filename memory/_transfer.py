"""Export and import: every record of a memory as one JSONL line (``procmem memory export|import``).

A line is ``{"level", "id", "text", "metadata", "payload"}``; an import checks every line before it writes
anything, so one bad line names its ``file:line`` and nothing is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from procmem.core import Episode, ProcmemError
from procmem.core.fileio import atomic_write_text
from procmem.memory._entries import Entry
from procmem.memory._experiences import EXPERIENCE
from procmem.memory._records import check_metadata
from procmem.memory.base import LEVELS, Level, MemoryRecord, MemoryStore

__all__ = ["export_jsonl", "import_jsonl"]

_EXPORT_KEYS = {"level", "id", "text", "metadata", "payload"}
_IMPORT_BATCH = 500


def export_jsonl(store: MemoryStore, path: str | os.PathLike[str], *, levels: Sequence[Level] = LEVELS) -> int:
    """Write every record of ``levels`` as JSONL (level order, then id), atomically; returns the count."""
    path = Path(path)
    lines = [_export_line(r) for level in levels for r in sorted(store.scan(level), key=lambda r: r.id)]
    try:
        atomic_write_text(path, "".join(lines))
    except OSError as err:
        raise ProcmemError(f"cannot write: {err.strerror}", where=str(path), fix="choose a writable file") from err
    return len(lines)


def import_jsonl(store: MemoryStore, path: str | os.PathLike[str]) -> dict[str, int]:
    """Read a file written by :func:`export_jsonl` and upsert every record; returns the count per level.
    Every line is checked first: one bad line raises a ``file:line`` :class:`~procmem.core.ProcmemError`
    and nothing is imported."""
    records = _read_export(Path(path))
    for level in LEVELS:
        batch = [r for r in records if r.level == level]
        for start in range(0, len(batch), _IMPORT_BATCH):
            store.upsert(batch[start:start + _IMPORT_BATCH])
    return {level: sum(r.level == level for r in records) for level in LEVELS}


def _export_line(record: MemoryRecord) -> str:
    data = {"level": record.level, "id": record.id, "text": record.text, "metadata": dict(record.metadata),
            "payload": dict(record.payload)}
    return json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"


def _read_export(path: Path) -> list[MemoryRecord]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ProcmemError(f"cannot read: {err.strerror}", where=str(path), fix="pass a file made by "
                           "`procmem memory export`") from err
    except UnicodeDecodeError as err:
        raise ProcmemError("is not UTF-8 text", where=str(path), fix="pass a JSONL file made by "
                           "`procmem memory export`") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(_import_record(line))
        except ValueError as err:
            raise ProcmemError(str(err), where=f"{path}:{number}",
                               fix="fix or delete that line (nothing was imported)") from err
    return records


def _import_record(line: str) -> MemoryRecord:
    """One export line as a record; raises ValueError saying what is wrong."""
    try:
        data = json.loads(line)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from err
    if not isinstance(data, dict) or set(data) != _EXPORT_KEYS:
        raise ValueError(f"expected an object with exactly the keys {sorted(_EXPORT_KEYS)}")
    level, record_id, text = data["level"], data["id"], data["text"]
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; levels are {', '.join(LEVELS)}")
    if not isinstance(record_id, str) or not record_id or not isinstance(text, str):
        raise ValueError("id must be a non-empty string and text a string")
    if not isinstance(data["metadata"], dict) or not isinstance(data["payload"], dict):
        raise ValueError("metadata and payload must be objects")
    record = MemoryRecord(id=record_id, level=level, text=text, metadata=check_metadata(data["metadata"]),
                          payload=data["payload"])
    if level == EXPERIENCE:
        try:
            episode = Episode.from_dict(record.payload)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"payload is not an episode: {type(err).__name__}: {err}") from err
        if episode.id != record_id:
            raise ValueError(f"payload holds episode {episode.id!r}, not {record_id!r}")
    else:
        Entry.from_record(record)  # raises ValueError when it is not an entry
    return record
