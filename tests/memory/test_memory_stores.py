"""Both MemoryStore implementations run the conformance suite; Chroma's own failure modes on top."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procmem.core import ProcmemError
from procmem.memory import ChromaStore, HashingEmbedder, InMemoryStore, MemoryRecord
from procmem.testing import MemoryStoreConformance


class TestInMemoryStore(MemoryStoreConformance):
    @pytest.fixture
    def store(self, embedder: HashingEmbedder) -> Iterator[InMemoryStore]:
        yield InMemoryStore(embedder)


class TestChromaEmbedded(MemoryStoreConformance):
    @pytest.fixture
    def store(self, embedder: HashingEmbedder, tmp_path: Path) -> Iterator[ChromaStore]:
        with ChromaStore.embedded(tmp_path / "chroma", embedder) as store:
            yield store


def test_chroma_persists_across_reopen(tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    record = MemoryRecord(id="a", level="insight", text="keep me", metadata={"k": 1}, payload={"p": [1]})
    with ChromaStore.embedded(tmp_path, embedder) as store:
        store.upsert([record])
    with ChromaStore.embedded(tmp_path, embedder) as store:
        assert store.get("insight", ["a"]) == [record]


def test_chroma_refuses_vectors_of_another_embedder(tmp_path: Path) -> None:
    with ChromaStore.embedded(tmp_path, HashingEmbedder(384)) as store:
        store.upsert([MemoryRecord(id="a", level="experience", text="x")])
    with ChromaStore.embedded(tmp_path, HashingEmbedder(64)) as other, pytest.raises(ProcmemError, match="embedder"):
        other.count("experience")


def test_chroma_never_uses_its_default_embedding_function(tmp_path: Path) -> None:
    import chromadb

    with ChromaStore.embedded(tmp_path, HashingEmbedder()) as store:
        store.upsert([MemoryRecord(id="a", level="experience", text="x")])
    client = chromadb.PersistentClient(path=str(tmp_path))
    col = client.get_collection("procmem_experience", embedding_function=None)
    # A default embedding function would be ONNX MiniLM (which downloads); ours has none configured.
    assert col.configuration.get("embedding_function") is None
    got: Any = col.get(ids=["a"], include=["embeddings"])
    assert len(got["embeddings"][0]) == 384


@pytest.mark.parametrize("kind", ["file", "foreign-dir"])
def test_chroma_rejects_a_path_that_is_not_a_memory(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("hello")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    with pytest.raises(ProcmemError) as err:
        ChromaStore.embedded(target, HashingEmbedder())
    assert str(target) in str(err.value)
    assert not (target / "chroma.sqlite3").exists() if kind == "foreign-dir" else target.read_text() == "hello"


def test_a_closed_chroma_store_refuses_work(tmp_path: Path) -> None:
    store = ChromaStore.embedded(tmp_path, HashingEmbedder())
    store.close()
    store.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        store.count("experience")


@pytest.mark.parametrize("url", ["ftp://host:1", "not a url", "http://"])
def test_a_bad_chroma_url_is_one_clear_error(url: str) -> None:
    with pytest.raises(ProcmemError, match="--chroma-url"):
        ChromaStore.remote(url, HashingEmbedder())


def test_an_unreachable_chroma_server_is_one_clear_error() -> None:
    with pytest.raises(ProcmemError, match="chroma run"):
        ChromaStore.remote("http://127.0.0.1:9", HashingEmbedder())


@pytest.fixture(scope="class")
def chroma_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Chroma server (`chroma run`) for the class; each test empties it first."""
    from procmem.memory.chroma_store import local_chroma_server

    data = tmp_path_factory.mktemp("chroma-server")
    with local_chroma_server(data / "data", log_path=data / "chroma.log") as url:
        yield url


class TestChromaServer(MemoryStoreConformance):
    """The store as `--chroma-url` opens it: every call over HTTP to a Chroma server."""

    @pytest.fixture
    def store(self, embedder: HashingEmbedder, chroma_server_url: str) -> Iterator[ChromaStore]:
        import chromadb
        from chromadb.config import Settings

        host, port = chroma_server_url.removeprefix("http://").split(":")
        client = chromadb.HttpClient(host=host, port=int(port), settings=Settings(anonymized_telemetry=False))
        for collection in client.list_collections():
            client.delete_collection(collection.name)
        with ChromaStore.remote(chroma_server_url, embedder) as store:
            yield store
