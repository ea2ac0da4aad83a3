"""The Chroma-backed memory store: one collection per level, cosine space, vectors always passed in.

Two ways to reach Chroma:

- :meth:`ChromaStore.embedded` opens a directory in this process (``chromadb.PersistentClient``).
  Chroma's embedded mode is not safe with several writing processes, and a process that keeps a client
  open does not see what another process wrote (its in-memory index goes stale and Chroma fails with
  "Error finding id"). So every operation runs under an inter-process file lock next to the database,
  and every write stamps a new generation token; a process that finds a token it did not write reopens
  its client first. Within one process all stores on the same directory share one client.
- :meth:`ChromaStore.remote` talks to a Chroma server (``chroma run --path DIR --port P``), which
  serialises single writes itself; use it when many processes (on any number of hosts) share one memory.
  A read-modify-write (:meth:`ChromaStore.update`: counters, status; :meth:`ChromaStore.exclusive`: merge on
  write) holds a lease lock kept on the server itself (:class:`_ServerLock`), so that no update is lost.

Search: HNSW with parameters tuned for recall (:data:`HNSW`; recall@5 >= 0.95 at 100k entries, see
``eval/bench/bench_memory.py``). A level of the embedded store small enough (:data:`EXACT_MAX`) is mirrored
in process memory (:class:`~procmem.memory.numpy_store.InMemoryStore`) and searched exactly there: faster
than Chroma below that size, and exact. The mirror follows this process's writes and is dropped when
another process writes (the generation token changes); while other processes keep writing, none is rebuilt.

Derived indexes (:data:`~procmem.memory.base.INDEXES`): each is a collection of its own,
``procmem_index_<name>``, holding a copy of each group's representative (the smallest id), written in the same
session as the write to its level that changes it; a search of it finds ``k`` distinct problems in one HNSW query
(:meth:`ChromaStore.query_distinct`). A memory made before an index existed gets it filled when it is opened (the
migration: chunked, each chunk its own locked session; a process stopped half way leaves what it wrote and the next
open goes on from there); until the fill is complete, searches take the widening path instead.

Never Chroma's default embedding function (it downloads a model): collections are created with
``embedding_function=None`` and every vector comes from this store's :class:`Embedder`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
from filelock import FileLock, Timeout

from procmem.core import ProcmemError
from procmem.memory._records import (
    RESERVED_PREFIX,
    as_matrix,
    as_vector,
    check_level,
    check_metadata,
    check_record,
    check_where,
    embedder_identity,
    last_per_id,
    matches,
    set_metadata,
    unique,
)
from procmem.memory.base import (
    INDEXES,
    DistinctIndex,
    Embedder,
    Level,
    MemoryRecord,
    MetadataChange,
    Scalar,
    ScoredRecord,
    VectorStoreBase,
    search_distinct,
)
from procmem.memory.embedding import embed_array
from procmem.memory.numpy_store import InMemoryStore

__all__ = ["EXACT_MAX", "HNSW", "ChromaStore", "local_chroma_server"]

T = TypeVar("T")

_PAYLOAD_KEY = f"{RESERVED_PREFIX}_payload"
_ORIGINAL_ID_KEY = f"{RESERVED_PREFIX}_id"
"""In an index collection: the id of the record a copy stands for (the copy's own id names its group)."""
_EMBEDDER_KEY = "procmem_embedder"
_INDEX_SPEC_KEY = "procmem_index"
_INDEX_COMPLETE_KEY = "procmem_index_complete"
_FILL_CHUNK = 500
"""Representatives copied per locked session while an index is filled."""
_LOCK_FILE = "procmem.lock"
_GENERATION_FILE = "procmem.generation"
_OWN_FILES = {_LOCK_FILE, _GENERATION_FILE, f"{_LOCK_FILE}.tmp", f"{_GENERATION_FILE}.tmp"}
_LOCK_TIMEOUT_S = 300.0
_LOCKS_COLLECTION = "procmem_locks"
_LOCK_ID = "memory"
_LEASE_S = 60.0
"""How long a server lock holder may keep the lock; a holder that died (kill -9) blocks the others this long."""
_WRITE_CHUNK = 1000
_SCAN_PAGE = 1000
_OVERFETCH_CAP = 256
_INCLUDE: Any = ["documents", "metadatas"]
_log = logging.getLogger("procmem.memory")

HNSW: dict[str, int] = {"max_neighbors": 32, "ef_construction": 200, "ef_search": 200}
"""HNSW parameters of new collections (M, build and search beam widths); Chroma's defaults are (16, 100, 100).
Measured recall@5 (``eval/bench/bench_memory.py``): random 384-d vectors, the hardest case, 0.78 at 20k entries
(defaults: 0.34); see docs/benchmarks.md for MiniLM embeddings. ``ef_search`` is also raised on collections
made with Chroma's default; :meth:`ChromaStore.set_ef_search` changes it."""

_CHROMA_EF_SEARCH = 100

EXACT_MAX = 5_000
"""Levels of the embedded store with at most this many entries are searched exactly in process memory."""

_QUIET_SESSIONS = 16
"""A mirror is (re)built only after this many sessions in a row without another process's write."""


class _BadChange(Exception):
    """Carries a ValueError raised by an update's change function through the retrying Chroma runner."""


def _collection_name(level: Level) -> str:
    return f"procmem_{level}"


def _index_name(index: DistinctIndex) -> str:
    return f"procmem_index_{index.name}"


def _mirror_name(index: DistinctIndex) -> str:
    """The name of an index's exact in-process mirror (a level's mirror is named by the level)."""
    return f"index:{index.name}"


def _group_id(group: tuple[str, Scalar]) -> str:
    """The id of a group's copy in an index collection."""
    return f"{group[0]}:{group[1]}"


def _kept(index: DistinctIndex) -> bool:
    """Whether this store keeps ``index`` (one of :data:`~procmem.memory.base.INDEXES`, spec and all)."""
    return any(kept.name == index.name and kept.spec() == index.spec() for kept in INDEXES)


def _complete(side: Any) -> bool:
    return (side.metadata or {}).get(_INDEX_COMPLETE_KEY) is True


@dataclass(frozen=True)
class _Row:
    """A record as Chroma holds it: raw metadata (payload included), document, and vector when at hand."""

    metadata: Mapping[str, Any]
    document: str | None
    vector: Any = None


@dataclass(frozen=True)
class _Hit:
    id: str
    text: str
    metadata: Mapping[str, Any]
    distance: float


class _Connection:
    """A Chroma client plus its collections, opened lazily and reopened on demand."""

    fix = "check that Chroma is reachable"

    def __init__(self, location: str) -> None:
        self.location = location
        self.lock = threading.RLock()
        self._client: Any = None
        self._collections: dict[Level, Any] = {}
        self._indexes: dict[str, Any] = {}

    def _connect(self) -> Any:
        raise NotImplementedError

    def _errors(self) -> tuple[type[BaseException], ...]:
        from chromadb.errors import ChromaError

        return (ChromaError,)

    @contextlib.contextmanager
    def session(self, *, write: bool) -> Iterator[None]:
        with self.lock:
            self.client()
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """A section no other writer of this memory enters (reentrant): this process's threads and, for the
        embedded store, other processes (the file lock); the remote connection adds the server lock."""
        with self.session(write=True):
            yield

    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def collection(self, level: Level, identity: str) -> Any:
        if level not in self._collections:
            col = self.client().get_or_create_collection(
                _collection_name(level), embedding_function=None,
                configuration={"hnsw": {"space": "cosine", **HNSW}},
                metadata={_EMBEDDER_KEY: identity})
            hnsw = (col.configuration or {}).get("hnsw") or {}
            if int(hnsw.get("ef_search") or 0) == _CHROMA_EF_SEARCH:  # made with Chroma's defaults
                col.modify(configuration={"hnsw": {"ef_search": HNSW["ef_search"]}})
            self._collections[level] = col
        return self._collections[level]

    def index(self, index: DistinctIndex, identity: str, *, create: Callable[[], bool] | None = None) -> Any:
        """The collection of ``index``; None when there is none, or it holds another spec. With ``create`` (only in a
        write session: making or dropping a collection is a write), one is made when there is none, complete when
        ``create()`` says its level holds nothing yet; one of another spec is dropped first. Only complete ones are
        kept open: an incomplete one is looked up again each time, to see when another process completes it."""
        from chromadb.errors import NotFoundError

        name = _index_name(index)
        if name in self._indexes:
            return self._indexes[name]
        try:
            side: Any = self.client().get_collection(name, embedding_function=None)
        except NotFoundError:
            side = None
        if side is not None and (side.metadata or {}).get(_INDEX_SPEC_KEY) != index.spec():
            if create is None:
                return None
            self.client().delete_collection(name)
            side = None
        if side is None:
            if create is None:
                return None
            side = self.client().get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine", **HNSW}},
                metadata={_EMBEDDER_KEY: identity, _INDEX_SPEC_KEY: index.spec(), _INDEX_COMPLETE_KEY: create()})
        if _complete(side):
            self._indexes[name] = side
        return side

    def mirror(self, name: str, col: Any, embedder: Embedder, load: Callable[[Any, InMemoryStore], None]
               ) -> InMemoryStore | None:
        """The exact in-memory copy of collection ``col`` (a level, by its name; an index, by :func:`_mirror_name`),
        loaded on first use; None when there is none (remote, or too big). Only the embedded connection keeps
        mirrors."""
        return None

    def mirrored(self, name: str) -> InMemoryStore | None:
        """The mirror named ``name`` if one is loaded (never loads one)."""
        return None

    def forget(self, name: str) -> None:
        """Drop the mirror named ``name`` (it grew too big, or is no longer known to be complete)."""

    def reset(self) -> None:
        """Drop the client so that the next session opens a fresh one."""
        client, self._client = self._client, None
        self._collections.clear()
        self._indexes.clear()
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken client must not hide the real error
                client.close()

    def run(self, write: bool, op: Callable[[], T]) -> T:
        """Run ``op`` in a session; on a Chroma error, reopen and try once more, then report it."""
        errors = self._errors()
        for attempt in (1, 2):
            try:
                with self.session(write=write):
                    return op()
            except errors as err:
                with self.lock:
                    self.reset()
                if attempt == 2:
                    raise ProcmemError(f"Chroma failed: {type(err).__name__}: {err}", where=self.location,
                                       fix=self.fix) from err
        raise AssertionError("unreachable")


class _EmbeddedConnection(_Connection):
    """A ``PersistentClient`` on a directory, coherent across processes (see the module docstring)."""

    fix = ("if it persists the directory may be damaged or from another Chroma version: move it aside "
           "and start a new memory")

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path
        self.users = 0
        self._file_lock = FileLock(str(path / _LOCK_FILE), timeout=_LOCK_TIMEOUT_S, thread_local=False)
        self._generation: str | None = None
        self._mirrors: dict[str, InMemoryStore | None] = {}
        self._quiet = _QUIET_SESSIONS  # sessions in a row without another process's write
        self._depth = 0  # sessions open in the thread that holds self.lock
        self._wrote = False  # whether one of them wrote

    def mirror(self, name: str, col: Any, embedder: Embedder, load: Callable[[Any, InMemoryStore], None]
               ) -> InMemoryStore | None:
        if name not in self._mirrors:
            if self._quiet < _QUIET_SESSIONS:  # other processes write now: a mirror would be reloaded each time
                return None
            mirror: InMemoryStore | None = None
            if col.count() <= EXACT_MAX:
                mirror = InMemoryStore(embedder)
                load(col, mirror)
            self._mirrors[name] = mirror
        return self._mirrors[name]

    def mirrored(self, name: str) -> InMemoryStore | None:
        return self._mirrors.get(name)

    def forget(self, name: str) -> None:
        self._mirrors.pop(name, None)

    def reset(self) -> None:
        self._mirrors.clear()
        super().reset()

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        return chromadb.PersistentClient(path=str(self.path), settings=Settings(anonymized_telemetry=False))

    @contextlib.contextmanager
    def session(self, *, write: bool) -> Iterator[None]:
        """The file lock and a fresh client; a session inside a session of the same thread (a grouped read, an
        exclusive section) costs nothing, and the outermost one stamps the generation if any of them wrote."""
        with self.lock:
            if self._depth:
                self._depth += 1
                self._wrote = self._wrote or write
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._file_lock.acquire()
            except Timeout as err:
                raise ProcmemError(f"memory is locked by another process for over {_LOCK_TIMEOUT_S:.0f} s",
                                   where=self._file_lock.lock_file,
                                   fix="wait for the other procmem process, or share memory through a Chroma "
                                       "server with --chroma-url") from err
            self._depth, self._wrote = 1, write
            try:
                current = self._read_generation()
                if current != self._generation:  # another process wrote: our client is stale
                    self.reset()
                    self._generation = current
                    self._quiet = 0
                else:
                    self._quiet += 1
                self.client()
                try:
                    yield
                finally:
                    if self._wrote:
                        self._generation = self._write_generation()
            finally:
                self._depth = 0
                self._file_lock.release()

    def _read_generation(self) -> str | None:
        try:
            return (self.path / _GENERATION_FILE).read_text()
        except FileNotFoundError:
            return None

    def _write_generation(self) -> str:
        token = uuid.uuid4().hex
        tmp = self.path / f"{_GENERATION_FILE}.tmp"
        tmp.write_text(token)
        os.replace(tmp, self.path / _GENERATION_FILE)
        return token


class _RemoteConnection(_Connection):
    """An ``HttpClient`` on a Chroma server."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ProcmemError("not a Chroma server URL", where=url, fix="pass --chroma-url http://HOST:PORT")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 8000)
        except ValueError as err:
            raise ProcmemError(f"bad port: {err}", where=url, fix="pass --chroma-url http://HOST:PORT") from err
        self._host, self._port, self._ssl = parsed.hostname, port, parsed.scheme == "https"
        self._server_lock_depth = 0
        self._locks_collection: Any = None
        self.fix = (f"start a server with `chroma run --path DIR --port {port}` or fix --chroma-url; "
                    "without --chroma-url procmem uses its embedded store")

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(host=self._host, port=self._port, ssl=self._ssl,
                                     settings=Settings(anonymized_telemetry=False))
        client.heartbeat()
        return client

    def _errors(self) -> tuple[type[BaseException], ...]:
        import httpx

        return (*super()._errors(), httpx.HTTPError, OSError, ValueError)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.lock:
            token = uuid.uuid4().hex  # the same token on a retry: acquiring twice is harmless
            if self._server_lock_depth == 0:
                self.run(True, lambda: _ServerLock(self._locks()).acquire(token))
            self._server_lock_depth += 1
            try:
                yield
            finally:
                self._server_lock_depth -= 1
                if self._server_lock_depth == 0:
                    self.run(True, lambda: _ServerLock(self._locks()).release(token))

    def _locks(self) -> Any:
        if self._locks_collection is None:
            self._locks_collection = self.client().get_or_create_collection(_LOCKS_COLLECTION,
                                                                            embedding_function=None)
        return self._locks_collection

    def reset(self) -> None:
        self._locks_collection = None
        super().reset()


class _ServerLock:
    """A lease lock on the Chroma server, shared by every process on every host that uses the memory.

    Chroma has no compare-and-set, but ``add`` of an id that exists is a no-op and the server applies
    writes in one order: every contender adds the record ``memory`` to the ``procmem_locks`` collection with
    its own random token, reads it back, and holds the lock if the token is its own. A contender that finds
    it held polls with reads only until it is gone (a write costs the server ~10x a read, and every writer
    waits behind it), then adds again. Release deletes the
    record only while it still carries the holder's token (a conditional delete). A holder that dies
    leaves the lock until its lease (:data:`_LEASE_S`, on the holder's clock: keep the hosts' clocks in
    sync) runs out; the next contender then deletes it. Sections are short (one read-modify-write).
    """

    def __init__(self, collection: Any) -> None:
        self._col = collection

    def acquire(self, token: str) -> None:
        owner = f"{socket.gethostname()}:{os.getpid()}"
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        pause = 0.002
        free = True  # as far as we know: only then try to take it (a write); while it is held, only read
        while True:
            if free:
                self._col.add(ids=[_LOCK_ID], embeddings=[[1.0]], documents=[owner],
                              metadatas=[{"token": token, "expires": time.time() + _LEASE_S}])
            held = self._col.get(ids=[_LOCK_ID], include=["metadatas", "documents"])
            if not held["ids"]:
                free = True  # released between our add and our read, or while we waited: try at once
                continue
            meta = held["metadatas"][0] or {}
            if meta.get("token") == token:
                return
            if float(meta.get("expires", 0.0)) < time.time():  # its holder died: break the lease
                self._release(str(meta.get("token", "")))
                free = True
                continue
            free = False
            if time.monotonic() > deadline:
                raise ProcmemError(f"the memory's server lock is held by {held['documents'][0]} for over "
                                   f"{_LOCK_TIMEOUT_S:.0f} s", where=f"collection {_LOCKS_COLLECTION}",
                                   fix="wait for that process, or delete the record 'memory' of that collection "
                                       "if it is gone")
            time.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 0.02)

    def release(self, token: str) -> None:
        self._release(token)

    def _release(self, token: str) -> None:
        self._col.delete(ids=[_LOCK_ID], where={"token": {"$eq": token}})


_EMBEDDED: dict[Path, _EmbeddedConnection] = {}
_EMBEDDED_LOCK = threading.Lock()


def _check_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ProcmemError("is a file, not a Chroma directory", where=str(path),
                           fix="point the memory at a directory")
    if path.is_dir():
        names = {p.name for p in path.iterdir()} - _OWN_FILES
        if names and "chroma.sqlite3" not in names:
            raise ProcmemError("is not a Chroma directory (no chroma.sqlite3) and is not empty", where=str(path),
                               fix="point the memory at an empty or new directory, or at an existing memory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ProcmemError(f"cannot create the memory directory: {err.strerror}", where=str(path),
                           fix="choose a writable location") from err


class ChromaStore(VectorStoreBase):
    """:class:`~procmem.memory.base.VectorMemoryStore` on Chroma. Thread-safe; use it as a context manager or
    call :meth:`close` to release the Chroma client.

    Records map onto Chroma as: id → id, text → document, metadata → metadata as is, payload → JSON in the
    reserved metadata key ``_procmem_payload``. Similarity is ``1 - cosine distance``.
    """

    def __init__(self, connection: _Connection, embedder: Embedder) -> None:
        self._conn = connection
        self._embedder = embedder
        self._identity = embedder_identity(embedder)
        self._closed = False

    @classmethod
    def embedded(cls, path: str | os.PathLike[str], embedder: Embedder) -> ChromaStore:
        """Open (or create) the memory in directory ``path``."""
        resolved = Path(path).expanduser().resolve()
        with _EMBEDDED_LOCK:
            conn = _EMBEDDED.get(resolved)
            if conn is None:
                _check_directory(resolved)
                conn = _EmbeddedConnection(resolved)
            conn.users += 1
            _EMBEDDED[resolved] = conn
        store = cls(conn, embedder)
        try:
            conn.run(False, lambda: None)  # open now, so a bad directory fails here and not mid-run
            store._prepare_indexes()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def remote(cls, url: str, embedder: Embedder) -> ChromaStore:
        """Connect to a Chroma server at ``url`` (``http://host:port``)."""
        conn = _RemoteConnection(url)
        conn.run(False, lambda: None)
        store = cls(conn, embedder)
        store._prepare_indexes()
        return store

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def location(self) -> str:
        """The directory or URL of this memory."""
        return self._conn.location

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if isinstance(conn, _EmbeddedConnection):
            with _EMBEDDED_LOCK:
                conn.users -= 1
                if conn.users > 0:
                    return
                _EMBEDDED.pop(conn.path, None)
        with conn.lock:
            conn.reset()

    def __enter__(self) -> ChromaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes ---------------------------------------------------------------------------------

    def upsert(self, records: Sequence[MemoryRecord]) -> None:
        records = [records[i] for i in last_per_id(records)]
        self.upsert_vectors(records, embed_array(self._embedder, [r.text for r in records]))

    def upsert_vectors(self, records: Sequence[MemoryRecord], vectors: npt.ArrayLike) -> None:
        matrix = as_matrix(vectors, len(records), self._embedder)
        keep = last_per_id(records)  # Chroma rejects repeated ids in one call
        payloads = {i: check_record(records[i]) for i in keep}
        for level in {records[i].level for i in keep}:
            rows = [i for i in keep if records[i].level == level]
            for start in range(0, len(rows), _WRITE_CHUNK):
                chunk = rows[start:start + _WRITE_CHUNK]
                self._write(level, functools.partial(
                    self._upsert_chunk, level, [records[i] for i in chunk], matrix[chunk],
                    metadatas=[{**records[i].metadata, _PAYLOAD_KEY: payloads[i]} for i in chunk]))

    def _upsert_chunk(self, level: Level, records: list[MemoryRecord], vectors: npt.NDArray[np.float32], col: Any,
                      *, metadatas: list[dict[str, Any]]) -> None:
        sides = self._sides(level, col)
        before = _upsert(col, ids=[r.id for r in records], embeddings=vectors, documents=[r.text for r in records],
                         metadatas=metadatas)
        if sides:
            after = {r.id: _Row(meta, r.text, vector) for r, meta, vector in zip(records, metadatas, vectors,
                                                                                  strict=True)}
            self._keep_indexes(sides, col, before, after)
        mirror = self._conn.mirrored(level)
        if mirror is not None:
            mirror.upsert_vectors(records, vectors)
            if mirror.count(level) > EXACT_MAX:
                self._conn.forget(level)

    def update(self, level: Level, ids: Sequence[str], change: MetadataChange) -> list[MemoryRecord]:
        ids = unique(ids)
        if not ids:
            return []

        def read_change_write(col: Any) -> list[MemoryRecord]:
            sides = self._sides(level, col)
            found = col.get(ids=ids, include=_INCLUDE)
            by_id = {i: self._record(level, i, doc, meta) for i, doc, meta in
                     zip(found["ids"], found["documents"], found["metadatas"], strict=True)}
            records = [by_id[i] for i in ids if i in by_id]
            try:
                changes = [check_metadata(change(record) or {}) for record in records]
            except ValueError as err:  # not a Chroma failure: must not be retried or reworded
                raise _BadChange(err) from err
            changed = [(r, c) for r, c in zip(records, changes, strict=True) if c]
            if changed:  # Chroma merges an update's metadata into the stored one: only the changed keys go
                col.update(ids=[r.id for r, _ in changed], metadatas=[c for _, c in changed])
                if sides:
                    raw = {i: (doc, meta or {}) for i, doc, meta in zip(found["ids"], found["documents"],
                                                                       found["metadatas"], strict=True)}
                    self._keep_indexes(sides, col, {r.id: raw[r.id][1] for r, _ in changed},
                                       {r.id: _Row({**raw[r.id][1], **c}, raw[r.id][0]) for r, c in changed})
                mirror = self._conn.mirrored(level)
                if mirror is not None:
                    for record, new in changed:
                        mirror.update(level, [record.id], set_metadata(new))
            return [MemoryRecord(r.id, level, r.text, {**r.metadata, **c}, r.payload)
                    for r, c in zip(records, changes, strict=True)]

        if not self._read(level, lambda col: col.get(ids=ids, include=[])["ids"]):
            return []  # none here (e.g. an insight id asked of the pattern level): no lock to take
        try:
            with self.exclusive():  # no other writer's update lands between the read and the write
                return self._write_returning(level, read_change_write)
        except _BadChange as err:
            raise err.args[0] from None

    def delete(self, level: Level, ids: Sequence[str]) -> None:
        ids = unique(ids)
        for start in range(0, len(ids), _WRITE_CHUNK):
            self._write(level, functools.partial(self._delete_chunk, level, list(ids[start:start + _WRITE_CHUNK])))

    def _delete_chunk(self, level: Level, ids: list[str], col: Any) -> None:
        sides = self._sides(level, col)
        before: dict[str, Mapping[str, Any]] = {}
        if sides:
            old = col.get(ids=ids, include=["metadatas"])
            before = {i: meta or {} for i, meta in zip(old["ids"], old["metadatas"], strict=True)}
        col.delete(ids=ids)
        if before:
            self._keep_indexes(sides, col, before, dict.fromkeys(before))
        mirror = self._conn.mirrored(level)
        if mirror is not None:
            mirror.delete(level, ids)

    def set_ef_search(self, level: Level, ef_search: int) -> None:
        """Set the HNSW search beam width of ``level`` (kept with the collection, for every process that opens it
        later): higher finds more of the true nearest neighbours and searches slower; the level's derived indexes get
        the same width. This process reopens its client, since Chroma keeps an open index's width. Chroma's default
        (100) is raised to ``HNSW``'s on open."""
        if not 1 <= ef_search <= 100_000:
            raise ValueError(f"ef_search must be in 1..100000, got {ef_search}")
        def modify(col: Any) -> None:
            for side in [col, *(s for _, s in self._sides(level, col, create=False))]:
                side.modify(configuration={"hnsw": {"ef_search": ef_search}})

        self._write(level, modify)
        with self._conn.lock:
            self._conn.reset()

    # --- reads ----------------------------------------------------------------------------------

    def get(self, level: Level, ids: Sequence[str]) -> list[MemoryRecord]:
        ids = unique(ids)
        if not ids:
            return []
        def op(col: Any) -> list[MemoryRecord]:
            mirror = self._mirror(level, col)
            if mirror is not None:
                return mirror.get(level, ids)
            found = col.get(ids=ids, include=_INCLUDE)
            by_id = {i: (doc, meta) for i, doc, meta in zip(found["ids"], found["documents"], found["metadatas"],
                                                             strict=True)}
            return [self._record(level, i, *by_id[i]) for i in ids if i in by_id]

        return self._read(level, op)

    def query_vector(
        self, level: Level, vector: npt.ArrayLike, *, k: int, where: Mapping[str, Scalar] | None = None
    ) -> list[ScoredRecord]:
        query = as_vector(vector, self._embedder)
        where = check_where(where)
        if k <= 0:
            return []
        def op(col: Any) -> list[ScoredRecord]:
            mirror = self._mirror(level, col)
            if mirror is not None:
                return mirror.query_vector(level, query, k=k, where=where)
            hits = self._nearest_matching(col, query, k, where)
            return [ScoredRecord(self._record(level, h.id, h.text, h.metadata), 1.0 - h.distance) for h in hits]

        return self._read(level, op)

    def scan(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> Iterator[MemoryRecord]:
        """Every record (matching ``where``), a page at a time; writes made meanwhile may or may not show."""
        where = check_where(where)
        mirrored = self._read(level, lambda col: None if (m := self._mirror(level, col)) is None
                              else list(m.scan(level, where=where)))
        if mirrored is not None:
            yield from mirrored
            return
        chroma_where = _chroma_where(where)
        offset = 0
        while True:
            page = self._read(level, functools.partial(_page, where=chroma_where, offset=offset))
            for entry_id, doc, meta in zip(page["ids"], page["documents"], page["metadatas"], strict=True):
                yield self._record(level, entry_id, doc, meta)
            if len(page["ids"]) < _SCAN_PAGE:
                return
            offset += _SCAN_PAGE

    def page(self, level: Level, *, offset: int, limit: int, where: Mapping[str, Scalar] | None = None
             ) -> list[MemoryRecord]:
        """Records ``offset`` to ``offset + limit`` (matching ``where``) in :meth:`scan`'s order, fetched as one page
        (the console browses a level with it)."""
        where = check_where(where)
        if limit <= 0:
            return []

        def op(col: Any) -> list[MemoryRecord]:
            mirror = self._mirror(level, col)
            if mirror is not None:
                return list(itertools.islice(mirror.scan(level, where=where), offset, offset + limit))
            found = col.get(where=_chroma_where(where), limit=limit, offset=offset, include=_INCLUDE)
            return [self._record(level, i, doc, meta) for i, doc, meta in
                    zip(found["ids"], found["documents"], found["metadatas"], strict=True)]

        return self._read(level, op)

    def count(self, level: Level, *, where: Mapping[str, Scalar] | None = None) -> int:
        where = check_where(where)
        chroma_where = _chroma_where(where)

        def op(col: Any) -> int:
            mirror = self._mirror(level, col)
            if mirror is not None:
                return mirror.count(level, where=where)
            if chroma_where is None:
                return int(col.count())
            return len(col.get(where=chroma_where, include=[])["ids"])

        return self._read(level, op)

    def query_distinct(self, index: DistinctIndex, vector: npt.ArrayLike, *, k: int) -> list[ScoredRecord]:
        """One search: the exact mirror's groups when the level is mirrored, else one HNSW query of the index's own
        collection. An index this store does not keep, or one still being filled, is searched by
        :func:`~procmem.memory.base.search_distinct`."""
        query = as_vector(vector, self._embedder)
        check_level(index.level)
        if k <= 0:
            return []

        def op(col: Any) -> list[ScoredRecord] | None:
            mirror = self._mirror(index.level, col)
            if mirror is not None:
                return mirror.query_distinct(index, query, k=k)
            side = self._conn.index(index, self._identity) if _kept(index) else None
            if side is None or not _complete(side):
                return None
            copies = self._conn.mirror(_mirror_name(index), side, self._embedder,
                                       functools.partial(self._load_copies, index))
            if copies is not None:  # few enough groups: searched exactly in process memory
                return copies.query_vector(index.level, query, k=k)
            found = side.query(query_embeddings=query[None, :], n_results=k,
                               include=["documents", "metadatas", "distances"])
            return [ScoredRecord(self._copy_record(index.level, doc, meta), 1.0 - distance)
                    for doc, meta, distance in zip(found["documents"][0], found["metadatas"][0],
                                                   found["distances"][0], strict=True)]

        hits = self._read(index.level, op)
        return search_distinct(self, index, query, k=k) if hits is None else hits

    # --- derived indexes ------------------------------------------------------------------------

    def _sides(self, level: Level, col: Any, *, create: bool = True) -> list[tuple[DistinctIndex, Any]]:
        """The collections of the indexes of ``level``, in a write session before ``col`` is written (a missing one is
        made, complete when ``col`` is empty; with ``create=False`` only the existing ones)."""
        sides = []
        for index in INDEXES:
            if index.level == level:
                side = self._conn.index(index, self._identity, create=(lambda: col.count() == 0) if create else None)
                if side is not None:
                    sides.append((index, side))
        return sides

    def _keep_indexes(self, sides: list[tuple[DistinctIndex, Any]], col: Any, before: Mapping[str, Mapping[str, Any]],
                      after: Mapping[str, _Row | None]) -> None:
        """Bring the indexes in step with a write to ``col`` that is done: ``before`` holds the raw metadata of the
        written records that existed, ``after`` every written id with what it holds now (None: deleted).

        A group's copy changes only when its representative (smallest id) does, or is itself rewritten; only a
        representative that left its group makes a filtered read of the level, for the next smallest."""
        for index, side in sides:
            touched: dict[str, tuple[str, Scalar]] = {}
            for record_id, row in after.items():
                for meta in (before.get(record_id), row.metadata if row is not None else None):
                    group = index.group(meta)
                    if group is not None:
                        touched[_group_id(group)] = group
            if not touched:
                continue
            found = side.get(ids=list(touched), include=["metadatas"])
            held = {gid: meta or {} for gid, meta in zip(found["ids"], found["metadatas"], strict=True)}
            current = {gid: str(meta.get(_ORIGINAL_ID_KEY, "")) for gid, meta in held.items()}
            members: dict[str, list[str]] = {}
            for record_id, row in after.items():
                group = index.group(row.metadata) if row is not None else None
                if group is not None:
                    members.setdefault(_group_id(group), []).append(record_id)
            chosen: dict[str, str | None] = {}
            for gid, group in touched.items():
                rep = current.get(gid)
                mine = members.get(gid, [])
                if rep is not None and rep in after and rep not in mine:  # the representative left its group
                    chosen[gid] = self._smallest(col, index, group)
                elif mine or rep is not None:
                    best = min([*mine, *([rep] if rep is not None else [])])
                    if best != rep or best in after:
                        chosen[gid] = best
            self._write_copies(index, side, col, chosen, held, after)

    def _smallest(self, col: Any, index: DistinctIndex, group: tuple[str, Scalar]) -> str | None:
        """The smallest id in ``group`` now (a filtered read of the whole level)."""
        found = col.get(where=_chroma_where({**index.where, index.key: group[1]}), include=[])["ids"]
        return min(found) if found else None

    def _write_copies(self, index: DistinctIndex, side: Any, col: Any, chosen: Mapping[str, str | None],
                      held: Mapping[str, Mapping[str, Any]], known: Mapping[str, _Row | None]) -> None:
        """Make ``side`` hold, for each group id in ``chosen``, a copy of the chosen record (None: no copy); ``held`` is
        the metadata of the copies there now (at least those of ``chosen``). A copy of the same record whose vector is
        not at hand (a metadata update) gets its metadata updated in place: Chroma merges it, and an update only ever
        sets keys."""
        current = {gid: str(meta.get(_ORIGINAL_ID_KEY, "")) for gid, meta in held.items()}
        mirror = self._conn.mirrored(_mirror_name(index))
        if mirror is not None:  # the copies it leaves: the ones replaced or dropped, and the rewritten ones
            mirror.delete(index.level, [current[gid] for gid in chosen if gid in current])
        drop = [gid for gid, rid in chosen.items() if rid is None]
        if drop:
            side.delete(ids=drop)
        write = {gid: rid for gid, rid in chosen.items() if rid is not None}
        same = {gid: rid for gid, rid in write.items()
                if current.get(gid) == rid and (row := known.get(rid)) is not None and row.vector is None}
        if same:
            rows = [known[rid] for rid in same.values()]
            side.update(ids=list(same), metadatas=[{**row.metadata, _ORIGINAL_ID_KEY: rid}  # type: ignore[union-attr]
                                                   for rid, row in zip(same.values(), rows, strict=True)])
            if mirror is not None:  # a metadata update: the vector stays, read it back from the index
                self._mirror_copies(index, mirror, side, list(same))
        rest = {gid: rid for gid, rid in write.items() if gid not in same}
        if not rest:
            self._check_mirror_size(index, mirror)
            return
        with_vector: dict[str, _Row] = {rid: row for rid in rest.values()
                                        if (row := known.get(rid)) is not None and row.vector is not None}
        missing = sorted({rid for rid in rest.values() if rid not in with_vector})
        if missing:
            found = col.get(ids=missing, include=["embeddings", *_INCLUDE])
            with_vector.update({i: _Row(meta or {}, doc, vector) for i, doc, meta, vector in
                                zip(found["ids"], found["documents"], found["metadatas"], found["embeddings"],
                                    strict=True)})
        ids = [gid for gid, rid in rest.items() if rid in with_vector]
        lost = [gid for gid in rest if gid not in ids]  # its record went meanwhile: the next write there mends it
        if lost:
            side.delete(ids=lost)
        if ids:
            vectors = np.asarray([with_vector[rest[g]].vector for g in ids], dtype=np.float32)
            _upsert(side, ids=ids, embeddings=vectors, documents=[with_vector[rest[g]].document or "" for g in ids],
                    metadatas=[{**with_vector[rest[g]].metadata, _ORIGINAL_ID_KEY: rest[g]} for g in ids],
                    before={g: held[g] for g in ids if g in held})
            if mirror is not None:
                mirror.upsert_vectors([self._record(index.level, rest[g], with_vector[rest[g]].document,
                                                    with_vector[rest[g]].metadata) for g in ids], vectors)
        self._check_mirror_size(index, mirror)

    def _mirror_copies(self, index: DistinctIndex, mirror: InMemoryStore, side: Any, gids: list[str]) -> None:
        """Copy the index's records ``gids`` into its mirror, as the index holds them now."""
        found = side.get(ids=gids, include=["embeddings", *_INCLUDE])
        if len(found["ids"]):
            mirror.upsert_vectors([self._copy_record(index.level, doc, meta) for doc, meta in
                                   zip(found["documents"], found["metadatas"], strict=True)],
                                  np.asarray(found["embeddings"], dtype=np.float32))

    def _check_mirror_size(self, index: DistinctIndex, mirror: InMemoryStore | None) -> None:
        if mirror is not None and mirror.count(index.level) > EXACT_MAX:
            self._conn.forget(_mirror_name(index))

    def _load_copies(self, index: DistinctIndex, side: Any, mirror: InMemoryStore) -> None:
        """Load an index's mirror: every copy, as the record it stands for."""
        offset = 0
        while True:
            page = side.get(limit=5 * _SCAN_PAGE, offset=offset, include=["embeddings", *_INCLUDE])
            if page["ids"]:
                mirror.upsert_vectors([self._copy_record(index.level, doc, meta) for doc, meta in
                                       zip(page["documents"], page["metadatas"], strict=True)],
                                      np.asarray(page["embeddings"], dtype=np.float32))
            if len(page["ids"]) < 5 * _SCAN_PAGE:
                return
            offset += 5 * _SCAN_PAGE

    def _copy_record(self, level: Level, document: str | None, metadata: Mapping[str, Any] | None) -> MemoryRecord:
        """The record an index copy stands for, as the level holds it."""
        meta = dict(metadata or {})
        return self._record(level, str(meta.pop(_ORIGINAL_ID_KEY, "")), document, meta)

    def _prepare_indexes(self) -> None:
        """The migration on open: fill each kept index that this memory's level has records for and that is not
        complete (a memory made before the index; an index whose spec changed; a fill that was stopped)."""
        for index in INDEXES:
            if self._conn.run(False, functools.partial(self._needs_fill, index)):
                self._fill(index)

    def _needs_fill(self, index: DistinctIndex) -> bool:
        from chromadb.errors import NotFoundError

        try:
            col = self._conn.client().get_collection(_collection_name(index.level), embedding_function=None)
        except NotFoundError:
            return False  # nothing written yet: the first write makes the index, complete
        if (col.metadata or {}).get(_EMBEDDER_KEY) != self._identity:
            return False  # another embedder's memory: every use reports it (see _collection)
        side = self._conn.index(index, self._identity)
        if side is not None and _complete(side):
            return False
        return side is not None or col.count() > 0

    def _fill(self, index: DistinctIndex) -> None:
        """Copy each group's representative into the index, a chunk per locked session (other processes go on
        meanwhile, and their writes keep the index in step), then mark it complete. Resumable: copies already right
        are left alone."""
        start = time.perf_counter()
        self._write(index.level, lambda col: self._sides(index.level, col))  # make the collection (a write)
        wanted: dict[str, tuple[tuple[str, Scalar], str]] = {}  # group id: (group, smallest id)

        def smallest_per_group(col: Any) -> None:
            offset, where = 0, _chroma_where(index.where)
            while True:
                page = col.get(where=where, include=["metadatas"], limit=_SCAN_PAGE, offset=offset)
                for record_id, meta in zip(page["ids"], page["metadatas"], strict=True):
                    group = index.group(meta)
                    if group is not None:
                        gid = _group_id(group)
                        if gid not in wanted or record_id < wanted[gid][1]:
                            wanted[gid] = (group, record_id)
                if len(page["ids"]) < _SCAN_PAGE:
                    return
                offset += _SCAN_PAGE

        self._read(index.level, smallest_per_group)
        held: dict[str, str] = {}  # what an earlier, stopped fill (or writes since) copied already

        def copied(col: Any) -> None:
            side, offset = self._conn.index(index, self._identity), 0
            while side is not None:
                page = side.get(include=["metadatas"], limit=_SCAN_PAGE, offset=offset)
                held.update({gid: str((meta or {}).get(_ORIGINAL_ID_KEY, "")) for gid, meta in
                             zip(page["ids"], page["metadatas"], strict=True)})
                if len(page["ids"]) < _SCAN_PAGE:
                    return
                offset += _SCAN_PAGE

        self._read(index.level, copied)
        groups = sorted(gid for gid, (_, rid) in wanted.items() if gid not in held or rid < held[gid])
        for lo in range(0, len(groups), _FILL_CHUNK):
            chunk = {gid: wanted[gid] for gid in groups[lo:lo + _FILL_CHUNK]}
            self._write(index.level, functools.partial(self._fill_chunk, index, chunk))

        def mark_complete(col: Any) -> None:
            side = self._conn.index(index, self._identity, create=lambda: False)
            side.modify(metadata={**(side.metadata or {}), _INDEX_COMPLETE_KEY: True})

        self._write(index.level, mark_complete)
        _log.info("memory index %s filled: %d groups copied, %d there already, in %.1f s", index.name, len(groups),
                  len(wanted) - len(groups), time.perf_counter() - start)

    def _fill_chunk(self, index: DistinctIndex, wanted: Mapping[str, tuple[tuple[str, Scalar], str]], col: Any
                    ) -> None:
        """Copy the representatives of one chunk of groups, unless the index holds a smaller id already (written since
        the snapshot by a write that kept it in step, or by an earlier fill)."""
        side = self._conn.index(index, self._identity, create=lambda: False)
        found = side.get(ids=list(wanted), include=["metadatas"])
        held = {gid: meta or {} for gid, meta in zip(found["ids"], found["metadatas"], strict=True)}
        current = {gid: str(meta.get(_ORIGINAL_ID_KEY, "")) for gid, meta in held.items()}
        todo = {gid: rid for gid, (_, rid) in wanted.items() if gid not in current or rid < current[gid]}
        if not todo:
            return
        found = col.get(ids=sorted(set(todo.values())), include=["embeddings", *_INCLUDE])
        rows = {i: _Row(meta or {}, doc, vector) for i, doc, meta, vector in
                zip(found["ids"], found["documents"], found["metadatas"], found["embeddings"], strict=True)}
        chosen: dict[str, str | None] = {}
        for gid, rid in todo.items():
            row = rows.get(rid)
            group = index.group(row.metadata) if row is not None else None
            if group is not None and _group_id(group) == gid:
                chosen[gid] = rid
            else:  # changed since the snapshot: look again
                chosen[gid] = self._smallest(col, index, wanted[gid][0])
        self._write_copies(index, side, col, chosen, held, rows)

    # --- helpers --------------------------------------------------------------------------------

    def _nearest_matching(
        self, col: Any, query: npt.NDArray[np.float32], k: int, where: Mapping[str, Scalar]
    ) -> list[_Hit]:
        """The ``k`` nearest records matching ``where``.

        Chroma's own filtered search scans the metadata of the whole collection (~30 ms at 20k entries),
        so first look among a growing number of unfiltered nearest neighbours, which is exact as soon as
        ``k`` of them match; only rare filters fall back to Chroma's filter.
        """
        if not where:
            return self._nearest(col, query, k, None)
        fetch = max(2 * k, 16)  # filters the agent uses match half (passed) or nearly all (split=train)
        while fetch <= _OVERFETCH_CAP:
            hits = self._nearest(col, query, fetch, None)
            matched = [h for h in hits if matches(h.metadata, where)]
            if len(matched) >= k or len(hits) < fetch:
                return matched[:k]
            fetch *= 4
        return self._nearest(col, query, k, _chroma_where(where))

    @staticmethod
    def _nearest(col: Any, query: npt.NDArray[np.float32], n: int, where: Any) -> list[_Hit]:
        found = col.query(query_embeddings=query[None, :], n_results=n, where=where,
                          include=["documents", "metadatas", "distances"])
        return [_Hit(*row) for row in zip(found["ids"][0], found["documents"][0], found["metadatas"][0],
                                          found["distances"][0], strict=True)]

    def _mirror(self, level: Level, col: Any) -> InMemoryStore | None:
        return self._conn.mirror(level, col, self._embedder, functools.partial(self._load_mirror, level))

    def _load_mirror(self, level: Level, col: Any, mirror: InMemoryStore) -> None:
        offset = 0
        while True:
            page = col.get(limit=5 * _SCAN_PAGE, offset=offset, include=["embeddings", *_INCLUDE])
            records = [self._record(level, i, doc, meta) for i, doc, meta in
                       zip(page["ids"], page["documents"], page["metadatas"], strict=True)]
            if records:
                mirror.upsert_vectors(records, np.asarray(page["embeddings"], dtype=np.float32))
            if len(records) < 5 * _SCAN_PAGE:
                return
            offset += 5 * _SCAN_PAGE

    def _record(self, level: Level, entry_id: str, document: str | None, metadata: Mapping[str, Any] | None
                ) -> MemoryRecord:
        meta = dict(metadata or {})
        payload = json.loads(meta.pop(_PAYLOAD_KEY, "{}"))
        return MemoryRecord(id=entry_id, level=level, text=document or "", metadata=meta, payload=payload)

    def _collection(self, level: Level) -> Any:
        col = self._conn.collection(check_level(level), self._identity)
        built_by = (col.metadata or {}).get(_EMBEDDER_KEY)
        space = ((col.configuration or {}).get("hnsw") or {}).get("space")
        if built_by != self._identity or space != "cosine":
            raise ProcmemError(f"collection {col.name} was built by embedder {built_by!r} in {space!r} space, "
                               f"not by {self._identity!r} in cosine space", where=self.location,
                               fix="open it with the embedder that built it, or use another memory directory")
        return col

    def _read(self, level: Level, op: Callable[[Any], T]) -> T:
        self._check_open()
        check_level(level)  # before the runner, which takes a ValueError inside for a Chroma server's failure
        return self._conn.run(False, lambda: op(self._collection(level)))

    def _write(self, level: Level, op: Callable[[Any], object]) -> None:
        self._write_returning(level, op)

    def _write_returning(self, level: Level, op: Callable[[Any], T]) -> T:
        self._check_open()
        check_level(level)
        return self._conn.run(True, lambda: op(self._collection(level)))

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Group several reads into one session (reentrant): the embedded store takes its file lock and checks for
        other processes' writes once for all of them instead of once per call (~1 ms each); writers in other
        processes wait until it ends, so keep it short (the agent's retrieval holds it for its store calls)."""
        self._check_open()
        with self._conn.session(write=False):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this memory's write lock across several operations (reentrant): the thread lock, plus the
        inter-process file lock when embedded, or the server's lease lock (:class:`_ServerLock`) when remote.
        Every :meth:`update` takes it too, so a read-modify-write inside loses no concurrent update."""
        self._check_open()
        with self._conn.exclusive():
            yield

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"this ChromaStore on {self.location} is closed")


def _upsert(col: Any, *, ids: list[str], metadatas: list[dict[str, Any]],
            before: Mapping[str, Mapping[str, Any]] | None = None, **columns: Any) -> Mapping[str, Mapping[str, Any]]:
    """Upsert that replaces metadata: Chroma merges an upsert's metadata into the stored one, so keys the
    new version lacks are sent as None, which deletes them. Returns the metadata the records had before (those
    that existed), read first unless the caller knows it (``before``)."""
    if before is None:
        old = col.get(ids=ids, include=["metadatas"])
        before = {i: meta or {} for i, meta in zip(old["ids"], old["metadatas"], strict=True)}
    metadatas = [{**dict.fromkeys(set(before.get(i, {})) - set(meta)), **meta} for i, meta in zip(ids, metadatas,
                                                                                                 strict=True)]
    col.upsert(ids=ids, metadatas=metadatas, **columns)
    return before



def _page(col: Any, where: dict[str, Any] | None, offset: int) -> Any:
    return col.get(where=where, limit=_SCAN_PAGE, offset=offset, include=_INCLUDE)


def _chroma_where(where: Mapping[str, Scalar]) -> dict[str, Any] | None:
    """Equality filters as Chroma wants them: one ``$eq`` clause, or an ``$and`` of several."""
    clauses = [{key: {"$eq": value}} for key, value in where.items()]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


@contextlib.contextmanager
def local_chroma_server(data_dir: Path, *, log_path: Path | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``chroma run`` (the CLI chromadb installs beside this Python) on a free loopback port over
    ``data_dir``; yields its URL once it answers its heartbeat, and stops it afterwards. For tests, benchmarks
    and trying server mode on one machine; in production run the server as its own service."""
    exe = Path(sys.executable).parent / "chroma"
    if not exe.exists():
        raise ProcmemError("the chroma CLI is not installed beside this Python", where=str(exe),
                           fix="pip install chromadb into this environment")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log_path = log_path or data_dir.parent / "chroma.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([str(exe), "run", "--path", str(data_dir), "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise ProcmemError(f"the chroma server did not answer within {timeout_s:.0f} s",
                                           where=str(log_path), fix="read its log") from None
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
