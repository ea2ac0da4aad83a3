"""Chroma's derived indexes (one collection per index, ``procmem_index_<name>``): the migration that fills them
when an older memory is opened (chunked, resumable, unused until complete), a rebuild when an index's spec
changes, and the agent's memory keeping them in step on record, feedback and eviction. Real Chroma throughout;
``EXACT_MAX`` is 0 so that every search goes to Chroma's HNSW index, not to the exact in-process mirror."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memory_helpers import episode, index_contents, index_expected

from procmem.core import Task
from procmem.memory import (
    ChromaStore,
    DistinctIndex,
    HashingEmbedder,
    InMemoryStore,
    MemoryConfig,
    MemoryRecord,
    ProceduralMemory,
)
from procmem.memory import chroma_store as chroma_module
from procmem.memory.base import EXAMPLES, INDEXES, PROBLEMS

GROUPS, PER_GROUP = 30, 4


@pytest.fixture(autouse=True)
def _through_hnsw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chroma_module, "EXACT_MAX", 0)


def _records() -> list[MemoryRecord]:
    """GROUPS problems, PER_GROUP episodes each (some failed, some test split), as ExperienceMemory stores them."""
    records = []
    for g in range(GROUPS):
        for j in range(PER_GROUP):
            records.append(MemoryRecord(
                id=f"e{(7 * g + 3 * j) % 97:02d}-{g}-{j}", level="experience", text=f"What is {g} + {g * 3 + 1}?",
                metadata={"problem": f"p{g}", "passed": (g + j) % 3 != 0, "split": "test" if g % 7 == 0 else "train"},
                payload={"g": g, "j": j}))
    return records


def _complete(store: ChromaStore, index: DistinctIndex) -> bool:
    side = store._conn.client().get_collection(f"procmem_index_{index.name}", embedding_function=None)
    return (side.metadata or {}).get("procmem_index_complete") is True


def _drop_indexes(store: ChromaStore) -> None:
    """Make the memory look like one written before the indexes existed."""
    for index in INDEXES:
        store._conn.run(True, lambda name=f"procmem_index_{index.name}": store._conn.client().delete_collection(name))


def _old_memory(path: Path) -> list[MemoryRecord]:
    records = _records()
    with ChromaStore.embedded(path, HashingEmbedder()) as store:
        store.upsert(records)
        _drop_indexes(store)
    return records


def _exact_groups(records: list[MemoryRecord], index: DistinctIndex, query: Any, k: int) -> list[str]:
    exact = InMemoryStore(HashingEmbedder())
    exact.upsert(records)
    return [h.record.id for h in exact.query_distinct(index, query, k=k)]


def test_an_older_memory_gets_its_indexes_filled_when_opened(tmp_path: Path) -> None:
    records = _old_memory(tmp_path / "chroma")
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        for index in INDEXES:
            assert _complete(store, index)
            assert index_contents(store, index) == index_expected(records, index)
        query = store.embedder.embed(["What is 4 + 13?"])[0]
        for index in INDEXES:  # the same answer as exact search over the same records
            assert [h.record.id for h in store.query_distinct(index, query, k=5)] == _exact_groups(
                records, index, query, 5)
        assert store.count("experience") == len(records)  # the level itself is untouched


def test_a_fill_stopped_half_way_is_not_used_and_the_next_open_goes_on(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    records = _old_memory(tmp_path / "chroma")
    monkeypatch.setattr(chroma_module, "_FILL_CHUNK", 4)
    real_chunk = ChromaStore._fill_chunk
    chunks: list[int] = []

    def stopping_chunk(self: ChromaStore, index: DistinctIndex, wanted: Any, col: Any) -> None:
        if len(chunks) == 2:
            raise KeyboardInterrupt  # the process is stopped mid-migration
        chunks.append(len(wanted))
        real_chunk(self, index, wanted, col)

    monkeypatch.setattr(ChromaStore, "_fill_chunk", stopping_chunk)
    with pytest.raises(KeyboardInterrupt):
        ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder())
    monkeypatch.setattr(ChromaStore, "_fill_chunk", real_chunk)

    monkeypatch.setattr(ChromaStore, "_prepare_indexes", lambda self: None)  # open without going on
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        index = INDEXES[0]
        assert not _complete(store, index) and len(index_contents(store, index)) == 8
        query = store.embedder.embed(["What is 4 + 13?"])[0]
        # not complete: searches take the widening path (a group's nearest record stands for it), still exact
        exact = {r.id: r.metadata["problem"] for r in records}
        assert [h.record.metadata["problem"] for h in store.query_distinct(index, query, k=5)] == [
            exact[i] for i in _exact_groups(records, index, query, 5)]
        store.delete("experience", [records[0].id])  # writes meanwhile keep what is there in step
        records = records[1:]
    monkeypatch.undo()
    monkeypatch.setattr(chroma_module, "EXACT_MAX", 0)
    copied: list[int] = []

    def counting_chunk(self: ChromaStore, index: DistinctIndex, wanted: Any, col: Any) -> None:
        copied.append(len(wanted))
        real_chunk(self, index, wanted, col)

    monkeypatch.setattr(ChromaStore, "_fill_chunk", counting_chunk)
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        for index in INDEXES:
            assert _complete(store, index)
            assert index_contents(store, index) == index_expected(records, index)
    # the groups copied before the stop were not copied again
    assert sum(copied) == len(index_expected(records, INDEXES[0])) - 8 + len(index_expected(records, INDEXES[1]))


def test_an_index_whose_spec_changed_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _records()
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        store.upsert(records)
    failed = DistinctIndex(EXAMPLES.name, "experience", {"passed": False}, "problem")
    monkeypatch.setattr(chroma_module, "INDEXES", (PROBLEMS, failed))
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        assert _complete(store, failed) and index_contents(store, failed) == index_expected(records, failed)
        query = store.embedder.embed(["What is 4 + 13?"])[0]
        assert [h.record.id for h in store.query_distinct(failed, query, k=3)] == _exact_groups(records, failed,
                                                                                               query, 3)


def test_a_new_memory_has_complete_indexes_from_its_first_write(tmp_path: Path) -> None:
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        store.upsert(_records()[:5])
        assert all(_complete(store, index) for index in INDEXES)


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[ProceduralMemory]:
    config = MemoryConfig.model_validate({"hygiene": {"max_experiences": 12}})
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        yield ProceduralMemory(store, config)


def _task(prompt: str) -> Task:
    return Task(id="new", prompt=prompt, verifier="exact:1", suite="rg:chain_sum")


def test_the_agent_memory_keeps_the_indexes_in_step_on_feedback_and_eviction(memory: ProceduralMemory) -> None:
    solved = [episode(f"t{i}", f"What is {i} + {i + 5}?", [str(2 * i + 5)]) for i in range(6)]
    for ep in solved:
        memory.after_episode(ep)
    task = _task("What is 2 + 8?")
    shown = {e.task.id for e in memory.similar_successes(task, 3)}
    assert len(shown) == 3
    # feedback: a shown answer turns out wrong; the episode is recorded again, failed, and is never shown again
    flipped = next(e for e in solved if e.task.id in shown)
    memory.record(replace(flipped, attempts=episode("x", "x", ["0"], passed=False).attempts))
    after = {e.task.id for e in memory.similar_successes(task, 6)}
    assert flipped.task.id not in after and len(after) == 5
    # eviction past the cap (12 episodes): whatever is evicted is never shown
    for i in range(20):
        memory.after_episode(episode(f"u{i}", f"Spell the word number {i} backwards.", ["x"]))
    kept = {e.id for e in memory.episodes()}
    assert len(kept) == 12
    for store_index in INDEXES:
        contents = index_contents(memory.store, store_index)  # type: ignore[arg-type]
        assert set(contents.values()) <= kept
        assert contents == index_expected(list(memory.store.scan("experience")), store_index)
    hits = memory.store.query_distinct(EXAMPLES, np.asarray(memory.store.embedder.embed([task.prompt])[0]), k=20)
    assert {h.record.id for h in hits} <= kept
