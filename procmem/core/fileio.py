"""Atomic writes, JSONL and content hashes shared by every package (procmem.core: no upward imports)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from procmem.core.errors import ProcmemError

__all__ = ["atomic_write_text", "hash_strings", "read_json", "read_jsonl", "write_json", "write_jsonl"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a synced temp file and ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ProcmemError(f"cannot read JSON: {err}", where=str(path),
                           fix="restore the file or delete it to start over") from err


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True, default=str) + "\n" for row in rows))


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ProcmemError(f"cannot read: {err.strerror}", where=str(path), fix="check the path") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as err:
            raise ProcmemError(f"invalid JSON line: {err}", where=f"{path}:{number}",
                               fix="fix or delete that line") from err


def hash_strings(items: Iterable[str]) -> str:
    """A stable sha256 over ``items`` in the given order (callers sort when order must not matter)."""
    digest = hashlib.sha256()
    for item in items:
        data = item.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return "sha256:" + digest.hexdigest()
