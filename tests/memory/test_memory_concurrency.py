"""Several writer processes on one memory: the embedded store's file lock, and a real Chroma server.

The load test starts 8 writers (episodes and counter updates on four shared entries), 1 reflector (merges
into those entries on write) and 1 distillation reader at once (tests/memory/memory_load_worker.py), then
checks that no episode was lost or duplicated, that every counter equals the updates made to it, and
that no merge, level or status was lost or corrupted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_helpers import index_contents, index_expected

from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord, ProceduralMemory
from procmem.memory.base import INDEXES
from procmem.memory.chroma_store import local_chroma_server

WRITES = 60  # records per writer process, written in batches of BATCH so that the writers interleave
BATCH = 6

_WRITER = textwrap.dedent("""
    import sys
    from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord, ProceduralMemory

    where, name, writes, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    embedder = HashingEmbedder()
    open_store = ChromaStore.remote if where.startswith("http") else ChromaStore.embedded
    with open_store(where, embedder) as store:
        for start in range(0, writes, batch):
            store.upsert([MemoryRecord(id=f"{name}-{i}", level="experience", text=f"{name} writes record {i}",
                                       metadata={"writer": name, "i": i}) for i in range(start, start + batch)])
            store.count("experience")  # interleave reads too: a stale client would fail here
    print("done", name)
""")


def run_writers(where: str, names: list[str]) -> None:
    """Start one writer process per name at once and wait for all of them."""
    # -I: the repository root (the cwd) must not shadow the installed package (its procmem/ lacks memory/)
    procs = [subprocess.Popen([sys.executable, "-I", "-c", _WRITER, where, name, str(WRITES), str(BATCH)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().startswith("done")


def check_nothing_lost(store: ChromaStore, names: list[str]) -> None:
    assert store.count("experience") == WRITES * len(names)
    for name in names:
        ids = [f"{name}-{i}" for i in range(WRITES)]
        assert [r.id for r in store.get("experience", ids)] == ids
        assert store.count("experience", where={"writer": name}) == WRITES
    hit = store.query("experience", f"{names[-1]} writes record 7", k=1)[0]
    assert hit.record.id == f"{names[-1]}-7"


def test_two_writer_processes_on_the_embedded_store_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    with ChromaStore.embedded(path, HashingEmbedder()) as store:
        store.upsert([MemoryRecord(id="parent", level="insight", text="written before the writers")])
        assert store.count("experience") == 0  # this client is now open while the writers run
        run_writers(str(path), ["w1", "w2"])
        check_nothing_lost(store, ["w1", "w2"])  # the parent's open client sees their writes
        assert store.count("insight") == 1


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    """A real Chroma server (`chroma run` from the installed chromadb) on 127.0.0.1; stopped afterwards."""
    with local_chroma_server(tmp_path / "server-data", log_path=tmp_path / "chroma.log") as url:
        yield url


def test_two_writer_processes_through_a_chroma_server_lose_nothing(chroma_server: str) -> None:
    with ChromaStore.remote(chroma_server, HashingEmbedder()) as store:
        store.upsert([MemoryRecord(id="parent", level="insight", text="written before the writers")])
        run_writers(chroma_server, ["s1", "s2"])
        check_nothing_lost(store, ["s1", "s2"])
        assert store.count("insight") == 1
        assert store.location == chroma_server


# --- the concurrent-load test ---------------------------------------------------------------------------

WORKER = Path(__file__).with_name("memory_load_worker.py")
WRITERS, EPISODES, MERGES, READS = 8, 4, 4, 3  # MERGES at most len(FRESH)
"""Small on purpose: ten processes on a shared 2-core CI machine; the invariants, not the volume, are tested."""


def run_load(where: str) -> list[dict[str, object]]:
    """The ten processes at once; each returns what it did (its JSON line)."""
    roles = [("writer", f"w{i}", EPISODES) for i in range(WRITERS)]
    roles += [("reflector", "r0", MERGES), ("distill", "d0", READS)]
    procs = [subprocess.Popen([sys.executable, "-I", str(WORKER), role, where, name, str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for role, name, n in roles]
    results = []
    deadline = time.monotonic() + 240
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise AssertionError("the load did not finish in 240 s") from None
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def check_load(store: ChromaStore, results: list[dict[str, object]]) -> None:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from memory_load_worker import CONFIG, SHARED, SHARED_IDS, shared_entry
    finally:
        sys.path.remove(str(WORKER.parent))
    memory = ProceduralMemory(store, CONFIG)
    writers = [r for r in results if r["role"] == "writer"]
    written = [e for r in writers for e in r["episodes"]]  # type: ignore[attr-defined]
    assert len(written) == len(set(written)) == WRITERS * EPISODES
    assert store.count("experience") == len(written), "an episode was lost or duplicated"
    assert sorted(e.task.id for e in memory.episodes()) == sorted(written)

    merged = next(r for r in results if r["role"] == "reflector")["merged"]
    for index, entry_id in enumerate(SHARED_IDS):
        helpful = sum(r["counts"][entry_id][0] for r in writers)  # type: ignore[index]
        harmful = sum(r["counts"][entry_id][1] for r in writers)  # type: ignore[index]
        entry = memory.entry(entry_id)
        assert entry is not None, f"shared entry {entry_id} is gone"
        assert (entry.helpful, entry.harmful, entry.uses) == (helpful, harmful, helpful + harmful), \
            f"{entry_id}: counters {(entry.helpful, entry.harmful, entry.uses)}, updates made {(helpful, harmful)}"
        expected = shared_entry(index)
        assert (entry.level, entry.kind, entry.text, entry.status) == (expected.level, expected.kind, expected.text,
                                                                       "active")
        assert set(merged[entry_id]) <= set(entry.merged_ids), "a merge on write was lost"  # type: ignore[index]
        assert entry.level == SHARED[index][0]
    assert memory.status_counts()["retired"] == {"insight": 0, "pattern": 0}  # none retired or corrupted
    assert all(e.status == "active" for level in ("insight", "pattern") for e in memory.entries(level))
    assert store.count("insight") == 3 + MERGES  # the shared ones plus each fresh one, none twice
    seen = next(r for r in results if r["role"] == "distill")["seen"]
    assert len(seen) == READS  # type: ignore[arg-type]
    episodes = list(store.scan("experience"))
    for index in INDEXES:  # the derived indexes followed every process's writes
        assert index_contents(store, index) == index_expected(episodes, index), index.name


def seed_shared(store: ChromaStore) -> None:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from memory_load_worker import CONFIG, SHARED, shared_entry
    finally:
        sys.path.remove(str(WORKER.parent))
    memory = ProceduralMemory(store, CONFIG)
    for index in range(len(SHARED)):
        assert memory.write_entry(shared_entry(index)) == "added"


def test_ten_processes_on_a_chroma_server_lose_no_episode_counter_or_merge(chroma_server: str) -> None:
    with ChromaStore.remote(chroma_server, HashingEmbedder()) as store:
        seed_shared(store)
        results = run_load(chroma_server)
        check_load(store, results)


def test_ten_processes_on_the_embedded_store_lose_no_episode_counter_or_merge(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    with ChromaStore.embedded(path, HashingEmbedder()) as store:
        seed_shared(store)
        results = run_load(str(path))
        check_load(store, results)
