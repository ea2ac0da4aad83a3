"""export → import round trips exactly; a malformed file names its bad line and imports nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from memory_helpers import SUMS, ScriptedPolicy, entry, episode

from procmem.core import ProcmemError
from procmem.memory import ProceduralMemory, open_memory
from procmem.memory.embedding import MiniLMEmbedder


@pytest.fixture
def exported(pmem: ProceduralMemory, tmp_path: Path) -> Path:
    for task_id, prompt, answers in SUMS:
        pmem.record(episode(task_id, prompt, answers))
    pmem.reflect(ScriptedPolicy())
    pmem.write_entry(entry("Ünïcode advice — keep “quotes” and the number 0.1 exact.", problem="p-x", helpful=3,
                           uses=4, status="retired"))
    path = tmp_path / "memory.jsonl"
    assert pmem.export_jsonl(path) == sum(pmem.stats().values())
    return path


def test_export_import_export_is_byte_identical(exported: Path, pmem: ProceduralMemory, minilm: MiniLMEmbedder,
                                                tmp_path: Path) -> None:
    fresh = open_memory(tmp_path / "fresh", embedder=minilm)
    counts = fresh.import_jsonl(exported)
    assert counts["experience"] == 3 and counts["insight"] >= 2 and counts["pattern"] >= 1
    again = tmp_path / "again.jsonl"
    fresh.export_jsonl(again)
    assert again.read_bytes() == exported.read_bytes()
    assert fresh.episodes() == pmem.episodes()
    for level in ("insight", "pattern"):
        assert fresh.entries(level) == pmem.entries(level)
    assert fresh.status_counts() == pmem.status_counts()


def test_import_overwrites_by_id_and_is_repeatable(exported: Path, pmem: ProceduralMemory) -> None:
    before = pmem.status_counts()
    pmem.import_jsonl(exported)
    pmem.import_jsonl(exported)
    assert pmem.status_counts() == before


def test_exporting_one_level(pmem: ProceduralMemory, exported: Path, tmp_path: Path) -> None:
    path = tmp_path / "insights.jsonl"
    n = pmem.export_jsonl(path, levels=("insight",))
    levels = {json.loads(line)["level"] for line in path.read_text().splitlines()}
    assert n == pmem.stats()["insight"] and levels == {"insight"}


def _break(lines: list[str], index: int, how: str) -> list[str]:
    data = json.loads(lines[index])
    if how == "not-json":
        lines[index] = lines[index][:-5]
    elif how == "bad-level":
        lines[index] = json.dumps({**data, "level": "episode"})
    elif how == "extra-key":
        lines[index] = json.dumps({**data, "extra": 1})
    elif how == "nested-metadata":
        lines[index] = json.dumps({**data, "metadata": {**data["metadata"], "x": [1]}})
    elif how == "bad-episode":
        lines[index] = json.dumps({**data, "payload": {"id": data["id"]}})
    elif how == "bad-entry":
        lines[index] = json.dumps({**data, "metadata": {**data["metadata"], "kind": "gossip"}})
    return lines


@pytest.mark.parametrize(("how", "level"), [("not-json", "insight"), ("bad-level", "experience"),
                                            ("extra-key", "pattern"), ("nested-metadata", "insight"),
                                            ("bad-episode", "experience"), ("bad-entry", "insight")])
def test_a_malformed_line_is_reported_with_its_number_and_nothing_is_imported(
    exported: Path, minilm: MiniLMEmbedder, tmp_path: Path, how: str, level: str
) -> None:
    lines = exported.read_text().splitlines()
    index = max(i for i, line in enumerate(lines) if json.loads(line)["level"] == level)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(_break(lines, index, how)) + "\n")
    fresh = open_memory(tmp_path / "fresh", embedder=minilm)
    with pytest.raises(ProcmemError) as err:
        fresh.import_jsonl(broken)
    assert err.value.where == f"{broken}:{index + 1}"
    assert "nothing was imported" in str(err.value)
    assert sum(fresh.stats().values()) == 0


def test_an_unreadable_file_is_one_clear_error(pmem: ProceduralMemory, tmp_path: Path) -> None:
    with pytest.raises(ProcmemError, match="cannot read"):
        pmem.import_jsonl(tmp_path / "missing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ProcmemError, match="UTF-8"):
        pmem.import_jsonl(binary)


def test_an_export_is_written_whole_or_not_at_all(pmem: ProceduralMemory, exported: Path, tmp_path: Path) -> None:
    nested = tmp_path / "new" / "dir" / "memory.jsonl"
    assert pmem.export_jsonl(nested) == sum(pmem.stats().values())
    assert nested.read_bytes() == exported.read_bytes()
    assert sorted(p.name for p in nested.parent.iterdir()) == ["memory.jsonl"], "no temp file is left behind"
    with pytest.raises(ProcmemError, match="cannot write"):
        pmem.export_jsonl(tmp_path)  # a directory: the old file, if any, stays as it was
    assert exported.read_bytes() == nested.read_bytes()
