"""Several writer processes on one memory: the embedded store's file lock, and a real Chroma server."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord

WRITES = 60  # records per writer process, written in batches of BATCH so that the writers interleave
BATCH = 6

_WRITER = textwrap.dedent("""
    import sys
    from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    """A real Chroma server (`chroma run` from the installed chromadb) on 127.0.0.1; stopped afterwards."""
    exe = Path(sys.executable).parent / "chroma"
    assert exe.exists(), "the chroma CLI of chromadb is not installed beside this python"
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    server = subprocess.Popen([str(exe), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "chroma.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "chroma server did not come up in 60 s"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_two_writer_processes_through_a_chroma_server_lose_nothing(chroma_server: str) -> None:
    with ChromaStore.remote(chroma_server, HashingEmbedder()) as store:
        store.upsert([MemoryRecord(id="parent", level="insight", text="written before the writers")])
        run_writers(chroma_server, ["s1", "s2"])
        check_nothing_lost(store, ["s1", "s2"])
        assert store.count("insight") == 1
        assert store.location == chroma_server
