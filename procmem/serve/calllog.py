"""The call log: every call and every piece of feedback, durable in SQLite (WAL), per tenant.

**Durability rule.** A call's row is committed before the last byte of its response is sent: before a
non-streaming response is returned, and before a stream's ``data: [DONE]``. So after a crash (even
``kill -9``) every call whose response finished is in the log. SQLite runs in WAL mode with
``synchronous=NORMAL``: a commit survives the process dying at any point; only an operating-system crash or
power loss can take back the last commits. A call cut off before its response finished is recorded as
``incomplete`` when the server is alive to see it (a client disconnect), and is absent after a crash.

The log is the source of truth. Procedural memory (Chroma) is derived from it: a background worker writes
each *verified* call (feedback, a correction or a verifier's verdict) as a memory episode, and on restart it
catches up with whatever changed since (``revision`` > ``memorized``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from procmem.core import utc_now

__all__ = ["CallLog", "CallRecord", "CallStatus", "FeedbackRecord"]

CallStatus = Literal["complete", "incomplete", "error"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    memorized INTEGER NOT NULL DEFAULT 0,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS feedback (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    data TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS feedback_by_episode ON feedback (tenant, episode_id);
CREATE INDEX IF NOT EXISTS calls_pending ON calls (memorized, revision);
"""


@dataclass(frozen=True)
class CallRecord:
    """One call as recorded (secrets already redacted)."""

    id: str
    tenant: str
    status: CallStatus
    model_id: str
    adapter_version: str | None
    messages: list[dict[str, Any]]
    """The request's messages as the client sent them."""
    prompt: str
    """What the backend was actually sent: the rendered prompt, or the messages with memory as JSON."""
    response: str
    """The whole answer (assembled from the chunks for a stream)."""
    finish_reason: str
    usage: dict[str, int]
    latency_ms: float
    started_at: str
    finished_at: str
    session_id: str | None = None
    task_id: str | None = None
    user: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    """Decoding parameters (temperature, top_p, max_tokens, stop, seed, tools...)."""
    memory_ids: tuple[str, ...] = ()
    stream: bool = False
    verifier: str = ""
    """``metadata.procmem_verifier``: the answer is judged by it at once (in the background)."""
    verdict: dict[str, Any] | None = None
    """The verifier's verdict on the answer, once judged."""
    error: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["memory_ids"] = list(self.memory_ids)
        return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> CallRecord:
        data = json.loads(text)
        data["memory_ids"] = tuple(data.get("memory_ids") or ())
        return cls(**data)


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    episode_id: str
    body: dict[str, Any]
    received_at: str


class CallLog:
    """Thread-safe access to ``calls.sqlite`` (one connection, one lock: each write is one short commit)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- calls ------------------------------------------------------------------------------------

    def record(self, call: CallRecord) -> bool:
        """Store a finished call; False (and nothing changes) when that episode id is already recorded."""
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO calls (tenant, id, data, finished_at) VALUES (?, ?, ?, ?)",
                (call.tenant, call.id, call.to_json(), call.finished_at))
            return cursor.rowcount == 1

    def get(self, tenant: str, episode_id: str) -> CallRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM calls WHERE tenant = ? AND id = ?",
                                     (tenant, episode_id)).fetchone()
        return CallRecord.from_json(row[0]) if row else None

    def set_verdict(self, tenant: str, episode_id: str, verdict: dict[str, Any]) -> None:
        with self._tx() as conn:
            row = conn.execute("SELECT data FROM calls WHERE tenant = ? AND id = ?", (tenant, episode_id)).fetchone()
            if row is None:
                return
            data = json.loads(row[0])
            data["verdict"] = verdict
            conn.execute("UPDATE calls SET data = ?, revision = revision + 1 WHERE tenant = ? AND id = ?",
                         (json.dumps(data, ensure_ascii=False, sort_keys=True), tenant, episode_id))

    def count(self, tenant: str | None = None) -> int:
        with self._lock:
            if tenant is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM calls WHERE tenant = ?", (tenant,)).fetchone()[0])

    def ids(self, tenant: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT id FROM calls WHERE tenant = ? ORDER BY finished_at, id",
                                                     (tenant,))]

    # --- feedback ---------------------------------------------------------------------------------

    def add_feedback(self, tenant: str, episode_id: str, feedback_id: str, body: dict[str, Any]) -> bool:
        """Store feedback; False (nothing changes) when this feedback id was stored before. Feedback for an
        episode not yet written is kept: the episode picks it up when it is recorded."""
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO feedback (tenant, id, episode_id, data, received_at) VALUES (?, ?, ?, ?, ?)",
                (tenant, feedback_id, episode_id, json.dumps(body, ensure_ascii=False, sort_keys=True), utc_now()))
            if cursor.rowcount != 1:
                return False
            conn.execute("UPDATE calls SET revision = revision + 1 WHERE tenant = ? AND id = ?", (tenant, episode_id))
            return True

    def feedback(self, tenant: str, episode_id: str) -> list[FeedbackRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, episode_id, data, received_at FROM feedback WHERE tenant = ? AND episode_id = ? "
                "ORDER BY received_at, rowid", (tenant, episode_id)).fetchall()
        return [FeedbackRecord(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    # --- what memory still has to learn -----------------------------------------------------------

    def pending(self, limit: int = 100) -> list[tuple[str, str, int]]:
        """(tenant, id, revision) of calls changed since memory last saw them."""
        with self._lock:
            rows = self._conn.execute("SELECT tenant, id, revision FROM calls WHERE memorized < revision "
                                      "ORDER BY finished_at LIMIT ?", (limit,)).fetchall()
        return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    def mark_memorized(self, tenant: str, episode_id: str, revision: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE calls SET memorized = MAX(memorized, ?) WHERE tenant = ? AND id = ?",
                         (revision, tenant, episode_id))
