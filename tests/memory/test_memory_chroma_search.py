"""Chroma's two search paths: the whole conformance suite again with the exact in-process mirror turned
off (every query goes to Chroma's HNSW index), and the mirror's coherence with Chroma."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord
from procmem.memory import chroma_store as chroma_module
from procmem.testing import MemoryStoreConformance


class TestChromaStoreThroughHnsw(MemoryStoreConformance):
    @pytest.fixture
    def store(self, embedder: HashingEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[ChromaStore]:
        monkeypatch.setattr(chroma_module, "EXACT_MAX", 0)
        with ChromaStore.embedded(tmp_path / "chroma", embedder) as s:
            yield s


class TestChromaStoreWithMirroredIndexes(MemoryStoreConformance):
    """Levels too big to mirror (past 50 entries) beside indexes small enough to be: the indexes are searched exactly
    in process memory, and their mirrors follow every write."""

    @pytest.fixture
    def store(self, embedder: HashingEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[ChromaStore]:
        monkeypatch.setattr(chroma_module, "EXACT_MAX", 50)
        with ChromaStore.embedded(tmp_path / "chroma", embedder) as s:
            yield s


def test_an_index_small_enough_is_searched_in_process_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from procmem.memory.base import EXAMPLES

    monkeypatch.setattr(chroma_module, "EXACT_MAX", 50)
    embedder = HashingEmbedder()
    records = [MemoryRecord(id=f"e{i:03d}", level="experience", text=f"What is {i % 20} + {i % 20 + 3}?",
                            metadata={"split": "train", "passed": True, "problem": f"p{i % 20}"}) for i in range(200)]
    with ChromaStore.embedded(tmp_path / "chroma", embedder) as store:
        store.upsert(records)
        query = embedder.embed(["What is 4 + 7?"])[0]
        hits = store.query_distinct(EXAMPLES, query, k=3)
        assert store._conn.mirrored("experience") is None  # 200 entries: the level is searched by HNSW
        assert store._conn.mirrored("index:examples") is not None  # 20 groups: the index is mirrored
        assert len({h.record.metadata["problem"] for h in hits}) == 3
        assert all(h.record == store.get("experience", [h.record.id])[0] for h in hits)


def test_new_collections_get_the_tuned_hnsw_parameters(tmp_path: Path) -> None:
    with ChromaStore.embedded(tmp_path / "chroma", HashingEmbedder()) as store:
        store.upsert([MemoryRecord(id="a", level="experience", text="What is 3 + 4?")])
        col = store._collection("experience")
        hnsw = col.configuration["hnsw"]
        assert {key: hnsw[key] for key in chroma_module.HNSW} == chroma_module.HNSW


def test_the_exact_mirror_answers_like_hnsw_and_follows_writes(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = HashingEmbedder()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [MemoryRecord(id=f"r{i}", level="experience", text=f"t{i}", metadata={"even": i % 2 == 0})
               for i in range(60)]
    with ChromaStore.embedded(tmp_path / "chroma", embedder) as store:
        store.upsert_vectors(records, vectors)
        exact = [h.record.id for h in store.query_vector("experience", vectors[7], k=5, where={"even": False})]
        assert store._conn.mirrored("experience") is not None  # the small level is mirrored
        store.update("experience", ["r7"], lambda r: {"even": True})  # followed by the mirror
        store.delete("experience", ["r9"])
        after = [h.record.id for h in store.query_vector("experience", vectors[7], k=5, where={"even": False})]
        assert exact[0] == "r7" and "r7" not in after and "r9" not in after
        monkeypatch.setattr(chroma_module, "EXACT_MAX", 0)
        store._conn.forget("experience")
        through_hnsw = [h.record.id for h in store.query_vector("experience", vectors[7], k=5,
                                                                where={"even": False})]
        assert store._conn.mirrored("experience") is None
        assert through_hnsw == after


def test_the_search_beam_width_trades_recall_and_is_kept_with_the_collection(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chroma_module, "EXACT_MAX", 0)
    embedder = HashingEmbedder()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, embedder.dim)).astype(np.float32)  # random: the hard case for HNSW
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:40] + 0.5 * rng.normal(size=(40, embedder.dim)).astype(np.float32) / embedder.dim ** 0.5
    exact = [set(np.argsort(-(vectors @ q))[:5].tolist()) for q in queries]

    def recall(store: ChromaStore) -> float:
        found = [{int(h.record.id[1:]) for h in store.query_vector("experience", q, k=5)} for q in queries]
        return float(np.mean([len(a & b) / 5 for a, b in zip(found, exact, strict=True)]))

    with ChromaStore.embedded(tmp_path / "chroma", embedder) as store:
        store.upsert_vectors([MemoryRecord(id=f"r{i}", level="experience", text="") for i in range(2000)], vectors)
        store.set_ef_search("experience", 1)
        narrow = recall(store)
        store.set_ef_search("experience", 400)
        wide = recall(store)
        with pytest.raises(ValueError, match="ef_search"):
            store.set_ef_search("experience", 0)
    assert wide >= 0.95 and narrow < wide, (narrow, wide)
    with ChromaStore.embedded(tmp_path / "chroma", embedder) as reopened:
        assert reopened._collection("experience").configuration["hnsw"]["ef_search"] == 400
