"""The MemoryStore conformance suite: every store implementation must pass all of it.

Use it by subclassing :class:`MemoryStoreConformance` in a ``test_*.py`` file and providing a ``store``
fixture that yields a fresh, empty store built on the ``embedder`` fixture. The suite provides that
``embedder`` itself: a :class:`~procmem.memory.HashingEmbedder`, so the suite stays fast and
deterministic (similarity is lexical, which is all these checks need); override it to test your own::

    import pytest
    from procmem.testing import MemoryStoreConformance

    class TestMyStore(MemoryStoreConformance):
        @pytest.fixture
        def store(self, embedder, tmp_path):
            with MyStore(tmp_path, embedder) as s:
                yield s

Stores that also implement :class:`~procmem.memory.VectorMemoryStore` (``upsert_vectors``,
``query_vector``, ``query_distinct``, ``exclusive``; e.g. subclasses of :class:`~procmem.memory.VectorStoreBase`) run
the vector checks too, the derived indexes (:class:`~procmem.memory.base.DistinctIndex`) among them; the others skip
them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from procmem.memory import (
    LEVELS,
    DistinctIndex,
    Embedder,
    HashingEmbedder,
    MemoryRecord,
    MemoryStore,
    VectorMemoryStore,
)
from procmem.memory.base import EXAMPLES

__all__ = ["MemoryStoreConformance"]

QUESTIONS = [
    "What is 3 + 4?",
    "What is 12 + 30?",
    "Spell the word cat backwards.",
    "How many letters r are in strawberry?",
    "Reverse the words: red green blue.",
    "Convert 13 to base 2.",
]


def _bad(value: Any) -> Any:
    """A value of the wrong type on purpose: what a store must refuse with a ValueError."""
    return value


def _rec(i: int, level: Any = "experience", **metadata: Any) -> MemoryRecord:
    meta = {"n": i, "passed": i % 2 == 0, "split": "train" if i < 4 else "test", **metadata}
    return MemoryRecord(id=f"r{i}", level=level, text=QUESTIONS[i], metadata=meta,
                        payload={"i": i, "nested": {"list": [1, "two", None, 3.5]}, "text": QUESTIONS[i]})


def _fill(store: MemoryStore) -> list[MemoryRecord]:
    records = [_rec(i) for i in range(len(QUESTIONS))]
    store.upsert(records)
    return records


def _random_unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


_BY_COLOUR = DistinctIndex("by-colour", "pattern", {"kept": True}, "colour")
"""An index no store keeps on its own: answered by whatever path the store has for indexes it does not keep."""


def _grouped(store: VectorMemoryStore, index: DistinctIndex) -> np.ndarray:
    """Records of ``index.level`` around a query vector (returned): 300 of group ``crowd`` right at it, then the groups
    g1..g5 ever farther (3 records each), and nearer than g1 records the index must leave out (not matching its filter,
    or without its key)."""
    dim = store.embedder.dim
    basis = np.linalg.qr(np.random.default_rng(3).normal(size=(dim, 8)))[0].T.astype(np.float32)  # orthonormal rows
    query = basis[0]
    match_key, match_value = next(iter(index.where.items()))

    def vector(distance: float, jitter: int) -> np.ndarray:
        v = query + distance * basis[1 + jitter % 6] + 1e-3 * jitter * basis[7]
        return (v / np.linalg.norm(v)).astype(np.float32)

    records: list[MemoryRecord] = []
    vectors: list[np.ndarray] = []

    def add(record_id: str, group: str | None, distance: float, jitter: int, *, matching: bool = True) -> None:
        meta: dict[str, Any] = dict(index.where) if matching else {match_key: "no" if match_value != "no" else "nope"}
        if group is not None:
            meta[index.key] = group
        records.append(MemoryRecord(id=record_id, level=index.level, text=f"{group} {record_id}", metadata=meta,
                                    payload={"group": group}))
        vectors.append(vector(distance, jitter))

    for i in range(300):
        add(f"crowd-{i:03d}", "crowd", 0.01, i)
    add("unmatched", "unmatched", 0.05, 1, matching=False)
    add("keyless", None, 0.05, 2)
    for g in range(1, 6):
        for j in range(3):
            add(f"g{g}-{j}", f"g{g}", 0.2 * g, j)
    store.upsert_vectors(records, np.stack(vectors))
    return query


class MemoryStoreConformance:
    """Behaviour every :class:`~procmem.memory.MemoryStore` must show. Subclasses provide the ``store``
    fixture (a fresh, empty store on the ``embedder`` fixture)."""

    @pytest.fixture
    def embedder(self) -> Embedder:
        """The embedder the ``store`` fixture should build on (override it to test another)."""
        return HashingEmbedder()

    # --- protocol ---------------------------------------------------------------------------------

    def test_is_a_memory_store(self, store: MemoryStore) -> None:
        assert isinstance(store, MemoryStore)

    def test_a_new_store_is_empty_at_every_level(self, store: MemoryStore) -> None:
        for level in LEVELS:
            assert store.count(level) == 0
            assert list(store.scan(level)) == []
            assert store.query(level, "anything", k=3) == []
            assert store.get(level, ["nope"]) == []

    # --- writes and reads -------------------------------------------------------------------------

    def test_get_returns_exactly_what_was_written(self, store: MemoryStore) -> None:
        records = _fill(store)
        got = store.get("experience", [r.id for r in records])
        assert got == records
        assert type(got[0].metadata["passed"]) is bool and type(got[0].metadata["n"]) is int
        assert got[0].payload["nested"] == {"list": [1, "two", None, 3.5]}

    def test_get_keeps_the_requested_order_skips_missing_and_repeats(self, store: MemoryStore) -> None:
        _fill(store)
        got = store.get("experience", ["r3", "missing", "r0", "r3"])
        assert [r.id for r in got] == ["r3", "r0"]
        assert store.get("experience", []) == []

    def test_upsert_overwrites_by_id(self, store: MemoryStore) -> None:
        _fill(store)
        new = MemoryRecord(id="r1", level="experience", text="Totally new text", metadata={"n": 99},
                           payload={"v": 2})
        store.upsert([new])
        assert store.count("experience") == len(QUESTIONS)
        assert store.get("experience", ["r1"]) == [new]
        assert store.query("experience", "Totally new text", k=1)[0].record == new

    def test_a_repeated_id_in_one_batch_keeps_the_last(self, store: MemoryStore) -> None:
        first = MemoryRecord(id="x", level="insight", text="first version", metadata={"v": 1})
        last = MemoryRecord(id="x", level="insight", text="last version", metadata={"v": 2})
        store.upsert([first, last])
        assert store.get("insight", ["x"]) == [last]
        assert store.count("insight") == 1

    def test_levels_are_separate_namespaces(self, store: MemoryStore) -> None:
        same_id = [MemoryRecord(id="same", level=level, text=f"{level} text", metadata={"level": level})
                   for level in LEVELS]
        store.upsert(same_id)
        for record in same_id:
            assert store.get(record.level, ["same"]) == [record]
            assert store.count(record.level) == 1
        store.delete("insight", ["same"])
        assert store.count("insight") == 0 and store.count("experience") == 1 and store.count("pattern") == 1

    def test_delete_removes_and_ignores_unknown_ids(self, store: MemoryStore) -> None:
        _fill(store)
        store.delete("experience", ["r0", "r2", "unknown"])
        assert store.count("experience") == len(QUESTIONS) - 2
        assert store.get("experience", ["r0", "r2"]) == []
        assert all(h.record.id not in ("r0", "r2") for h in store.query("experience", QUESTIONS[0], k=10))
        store.delete("experience", [])

    def test_unicode_and_empty_payload_round_trip(self, store: MemoryStore) -> None:
        record = MemoryRecord(id="ü-1", level="pattern", text="Épeler «chat» à l'envers → tahc 🐈",
                              metadata={"note": "naïve ✓", "score": 0.25})
        store.upsert([record])
        assert store.get("pattern", ["ü-1"]) == [record]

    def test_update_changes_only_the_metadata_it_returns(self, store: MemoryStore) -> None:
        records = _fill(store)
        seen: list[str] = []

        def bump(record: MemoryRecord) -> dict[str, Any] | None:
            seen.append(record.id)
            return None if record.id == "r1" else {"n": int(record.metadata["n"]) + 10, "status": "retired"}

        updated = store.update("experience", ["r0", "r1", "missing", "r0"], bump)
        assert seen == ["r0", "r1"] and [r.id for r in updated] == ["r0", "r1"]
        r0 = store.get("experience", ["r0"])[0]
        assert r0 == updated[0]
        assert r0.metadata == {**records[0].metadata, "n": 10, "status": "retired"}
        assert r0.text == records[0].text and r0.payload == records[0].payload
        assert store.get("experience", ["r1"]) == [records[1]] == [updated[1]]
        assert store.count("experience", where={"status": "retired"}) == 1
        assert store.query("experience", QUESTIONS[0], k=1, where={"status": "retired"})[0].record == r0
        assert store.update("experience", [], bump) == []
        with pytest.raises(ValueError):
            store.update("experience", ["r2"], lambda r: _bad({"bad": [1]}))
        with pytest.raises(ValueError):
            store.update("experience", ["r2"], lambda r: {"_procmem_payload": "x"})
        assert store.get("experience", ["r2"]) == [records[2]]

    def test_concurrent_updates_of_one_counter_lose_no_increment(self, store: MemoryStore) -> None:
        from concurrent.futures import ThreadPoolExecutor

        store.upsert([MemoryRecord(id="c", level="insight", text="counter", metadata={"uses": 0})])
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: store.update("insight", ["c"], lambda r: {"uses": int(r.metadata["uses"]) + 1}),
                          range(40)))
        assert store.get("insight", ["c"])[0].metadata["uses"] == 40

    def test_an_exclusive_section_holds_off_other_writers_and_is_reentrant(self, store: MemoryStore) -> None:
        import threading

        if not isinstance(store, VectorMemoryStore):
            pytest.skip("exclusive() belongs to VectorMemoryStore")
        store.upsert([MemoryRecord(id="c", level="insight", text="counter", metadata={"uses": 0})])
        entered = threading.Event()

        def bump() -> None:
            entered.set()
            store.update("insight", ["c"], lambda r: {"uses": int(r.metadata["uses"]) + 1})

        with store.exclusive():
            seen = int(store.get("insight", ["c"])[0].metadata["uses"])  # a read-then-write, as a merge does
            other = threading.Thread(target=bump)
            other.start()
            entered.wait(5)
            other.join(0.3)
            assert other.is_alive(), "another writer ran inside the exclusive section"
            store.upsert([MemoryRecord(id="c", level="insight", text="counter", metadata={"uses": seen + 10})])
        other.join(10)
        assert store.get("insight", ["c"])[0].metadata["uses"] == 11

    # --- search -----------------------------------------------------------------------------------

    def test_query_ranks_by_similarity_and_returns_at_most_k(self, store: MemoryStore) -> None:
        _fill(store)
        hits = store.query("experience", "What is 3 + 4?", k=3)
        assert len(hits) == 3
        assert hits[0].record.id == "r0" and hits[0].similarity == pytest.approx(1.0, abs=1e-3)
        assert hits[1].record.id == "r1"  # the other sum shares most n-grams
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in sims)
        assert len(store.query("experience", "x", k=100)) == len(QUESTIONS)
        assert store.query("experience", "x", k=0) == []

    def test_query_filters_on_metadata_equality(self, store: MemoryStore) -> None:
        _fill(store)
        hits = store.query("experience", "What is 3 + 4?", k=10, where={"passed": True, "split": "train"})
        assert sorted(h.record.id for h in hits) == ["r0", "r2"]
        assert store.query("experience", "What is 3 + 4?", k=10, where={"split": "nowhere"}) == []
        assert store.query("experience", "What is 3 + 4?", k=10, where={"absent_key": 1}) == []

    def test_filters_do_not_confuse_bool_and_int(self, store: MemoryStore) -> None:
        store.upsert([MemoryRecord(id="b", level="insight", text="a bool", metadata={"flag": True}),
                      MemoryRecord(id="i", level="insight", text="an int", metadata={"flag": 1})])
        assert [r.id for r in store.scan("insight", where={"flag": True})] == ["b"]
        assert [r.id for r in store.scan("insight", where={"flag": 1})] == ["i"]
        assert store.count("insight", where={"flag": False}) == 0

    def test_scan_and_count_with_and_without_filters(self, store: MemoryStore) -> None:
        records = _fill(store)
        assert sorted(r.id for r in store.scan("experience")) == sorted(r.id for r in records)
        train = [r for r in records if r.metadata["split"] == "train"]
        assert sorted(r.id for r in store.scan("experience", where={"split": "train"})) == [r.id for r in train]
        assert store.count("experience", where={"split": "train"}) == len(train)
        assert store.count("experience", where={"split": "train", "passed": False}) == 2
        assert {r.id: r for r in store.scan("experience")} == {r.id: r for r in records}

    def test_filters_stay_right_across_writes(self, store: MemoryStore) -> None:
        records = _fill(store)
        where = {"split": "train"}
        before = {r.id for r in store.scan("experience", where=where)}  # a store may keep this filter's rows
        moved = sorted(before)[0]
        store.update("experience", [moved], lambda r: {"split": "test"})
        store.delete("experience", [sorted(before)[1]])
        store.upsert([MemoryRecord(id="new-train", level="experience", text="What is new?", metadata=where),
                      MemoryRecord(id="new-test", level="experience", text="What is newer?",
                                   metadata={"split": "test"}),
                      ])
        after = before - {moved, sorted(before)[1]} | {"new-train"}
        assert {r.id for r in store.scan("experience", where=where)} == after
        assert store.count("experience", where=where) == len(after)
        assert {h.record.id for h in store.query("experience", "What", k=len(records) + 5, where=where)} == after

    def test_concurrent_writer_threads_lose_nothing(self, store: MemoryStore) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def write(worker: int) -> None:
            for i in range(10):
                store.upsert([MemoryRecord(id=f"t{worker}-{i}", level="experience", text=f"thread {worker} item {i}",
                                           metadata={"worker": worker})])
                store.count("experience", where={"worker": worker})

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        assert store.count("experience") == 40
        assert all(store.count("experience", where={"worker": w}) == 10 for w in range(4))

    # --- derived indexes ----------------------------------------------------------------------------

    @pytest.mark.parametrize("index", [EXAMPLES, _BY_COLOUR], ids=["kept", "not-kept"])
    def test_query_distinct_finds_k_groups_however_many_records_one_holds(self, store: MemoryStore,
                                                                          index: DistinctIndex) -> None:
        if not isinstance(store, VectorMemoryStore):
            pytest.skip("query_distinct belongs to VectorMemoryStore")
        query = _grouped(store, index)
        hits = store.query_distinct(index, query, k=3)
        assert [h.record.metadata[index.key] for h in hits] == ["crowd", "g1", "g2"]
        sims = [h.similarity for h in hits]
        assert sims == sorted(sims, reverse=True)
        for hit in hits:  # each is a record of its group, exactly as the level holds it
            assert store.get(index.level, [hit.record.id]) == [hit.record]
            assert hit.record.payload == {"group": hit.record.metadata[index.key]}
        assert [h.record.metadata[index.key] for h in store.query_distinct(index, query, k=100)] == [
            "crowd", "g1", "g2", "g3", "g4", "g5"]
        assert store.query_distinct(index, query, k=0) == []

    @pytest.mark.parametrize("index", [EXAMPLES, _BY_COLOUR], ids=["kept", "not-kept"])
    def test_query_distinct_follows_every_write(self, store: MemoryStore, index: DistinctIndex) -> None:
        if not isinstance(store, VectorMemoryStore):
            pytest.skip("query_distinct belongs to VectorMemoryStore")
        query = _grouped(store, index)
        (match_key, _), *_ = index.where.items()

        def groups() -> list[str]:
            hits = store.query_distinct(index, query, k=4)
            for hit in hits:
                assert store.get(index.level, [hit.record.id]) == [hit.record]
            return [str(h.record.metadata[index.key]) for h in hits]

        for _ in range(2):  # deleting the record that stands for g1 leaves g1 to another of its records, twice
            shown = next(h.record.id for h in store.query_distinct(index, query, k=2) if h.record.id.startswith("g1"))
            store.delete(index.level, [shown])
            assert groups() == ["crowd", "g1", "g2", "g3"]
        store.update(index.level, ["g1-0", "g1-1", "g1-2"], lambda r: {match_key: "elsewhere"})  # g1 leaves
        assert groups() == ["crowd", "g2", "g3", "g4"]
        store.update(index.level, ["g1-2"], lambda r: dict(index.where))  # one record of g1 is back
        assert groups() == ["crowd", "g1", "g2", "g3"]
        store.update(index.level, ["g1-2"], lambda r: {"note": "seen"})  # metadata the index does not look at
        assert next(h for h in store.query_distinct(index, query, k=2) if h.record.id == "g1-2"
                    ).record.metadata["note"] == "seen"
        moved = store.get(index.level, ["g2-0", "g2-1", "g2-2"])
        store.upsert([MemoryRecord(r.id, r.level, r.text, {**r.metadata, index.key: "g9"}, r.payload) for r in moved])
        assert groups()[:2] == ["crowd", "g1"] and "g2" not in groups()  # upserted under another key: g2 is gone
        store.delete(index.level, [f"crowd-{i:03d}" for i in range(300)])
        assert groups()[0] == "g1"

    # --- bad input --------------------------------------------------------------------------------

    @pytest.mark.parametrize("bad", [
        MemoryRecord(id="", level="experience", text="no id"),
        MemoryRecord(id="x", level=_bad("nonsense"), text="bad level"),
        MemoryRecord(id="x", level="experience", text="t", metadata=_bad({"list": [1, 2]})),
        MemoryRecord(id="x", level="experience", text="t", metadata=_bad({"none": None})),
        MemoryRecord(id="x", level="experience", text="t", metadata={"_procmem_payload": "mine"}),
        MemoryRecord(id="x", level="experience", text="t", payload={"f": float("nan")}),
        MemoryRecord(id="x", level="experience", text="t", payload={"o": object()}),
    ], ids=["empty-id", "level", "list-meta", "none-meta", "reserved-key", "nan-payload", "object-payload"])
    def test_invalid_records_are_rejected_and_nothing_is_written(self, store: MemoryStore, bad: MemoryRecord
                                                                   ) -> None:
        good = MemoryRecord(id="good", level="experience", text="fine")
        with pytest.raises(ValueError):
            store.upsert([good, bad])
        assert store.count("experience") == 0

    def test_unknown_levels_and_bad_filters_are_value_errors(self, store: MemoryStore) -> None:
        with pytest.raises(ValueError):
            store.count(_bad("episodes"))
        with pytest.raises(ValueError):
            store.query(_bad("experiences"), "q", k=1)
        with pytest.raises(ValueError):
            list(store.scan("experience", where=_bad({"k": [1]})))

    # --- vector stores ----------------------------------------------------------------------------

    def test_precomputed_vectors_are_searched_as_given(self, store: MemoryStore) -> None:
        if not isinstance(store, VectorMemoryStore):
            pytest.skip("not a VectorMemoryStore")
        dim = store.embedder.dim
        vectors = _random_unit(50, dim, seed=1)
        records = [MemoryRecord(id=f"v{i}", level="pattern", text=f"row {i}", metadata={"odd": i % 2 == 1})
                   for i in range(50)]
        store.upsert_vectors(records, vectors)
        hits = store.query_vector("pattern", vectors[7], k=3)
        assert hits[0].record.id == "v7" and hits[0].similarity == pytest.approx(1.0, abs=1e-3)
        expected = np.argsort(-(vectors @ vectors[7]))[:3]
        assert [h.record.id for h in hits] == [f"v{i}" for i in expected]
        odd = store.query_vector("pattern", vectors[7], k=5, where={"odd": False})
        assert len(odd) == 5 and all(not h.record.metadata["odd"] for h in odd)
        with pytest.raises(ValueError):
            store.upsert_vectors(records[:2], vectors[:3])
        with pytest.raises(ValueError):
            store.query_vector("pattern", vectors[0][:10], k=1)

    def test_a_rare_filter_still_finds_its_matches_among_many(self, store: MemoryStore) -> None:
        if not isinstance(store, VectorMemoryStore):
            pytest.skip("not a VectorMemoryStore")
        rows = 1200  # past a scan page (1000) and past any over-fetch window (256)
        vectors = _random_unit(rows, store.embedder.dim, seed=2)
        records = [MemoryRecord(id=f"m{i}", level="experience", text=f"row {i}",
                                metadata={"rare": i in (5, 1100), "i": i}) for i in range(rows)]
        store.upsert_vectors(records, vectors)
        assert store.count("experience") == rows
        assert len({r.id for r in store.scan("experience")}) == rows
        far = -vectors[5]  # the rare rows are nowhere near the top of an unfiltered search
        hits = store.query_vector("experience", far, k=3, where={"rare": True})
        assert sorted(h.record.id for h in hits) == ["m1100", "m5"]
        assert store.count("experience", where={"rare": True}) == 2
