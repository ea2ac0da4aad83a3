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

**Columns for the console.** Besides the JSON document, each call keeps the fields the console filters and
counts on as indexed columns (status, session, task, adapter version, latency, a preview of the question, the
number of feedback items, whether a correction came, and ``outcome``: the answer judged ``passed`` or
``failed`` by the one feedback rule, :func:`~procmem.core.feedback.feedback_episode`, or NULL while
unverified). They are kept up to date on every write; a log written before they existed is migrated when it
is opened (``PRAGMA user_version`` 0 -> 1: columns added, filled from the JSON, indexes built).
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

from procmem.core import Home, Task, Verdict, utc_now
from procmem.core.feedback import Feedback, feedback_episode

__all__ = ["CallFilter", "CallLog", "CallRecord", "CallRow", "CallStatus", "FeedbackRecord", "calls_path"]

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

_SCHEMA_VERSION = 1
_DERIVED = (  # (column, type) kept beside the JSON document for the console's filters (migration 0 -> 1)
    ("status", "TEXT"), ("session_id", "TEXT"), ("task_id", "TEXT"), ("adapter_version", "TEXT"),
    ("latency_ms", "REAL"), ("preview", "TEXT"), ("outcome", "TEXT"), ("feedback", "INTEGER NOT NULL DEFAULT 0"),
    ("corrected", "INTEGER NOT NULL DEFAULT 0"))
_INDEXES = """
CREATE INDEX IF NOT EXISTS calls_recent ON calls (tenant, finished_at, outcome, feedback, adapter_version);
CREATE INDEX IF NOT EXISTS calls_by_session ON calls (tenant, session_id, finished_at);
CREATE INDEX IF NOT EXISTS calls_by_task ON calls (tenant, task_id, finished_at);
CREATE INDEX IF NOT EXISTS calls_by_outcome ON calls (tenant, outcome, finished_at);
CREATE INDEX IF NOT EXISTS calls_by_adapter ON calls (tenant, adapter_version, finished_at);
CREATE INDEX IF NOT EXISTS calls_by_feedback ON calls (tenant, feedback, corrected, finished_at);
"""
_PREVIEW_CHARS = 200


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
    trace: str = ""
    """The W3C ``traceparent`` of the call's span when it was traced (later spans, its verification and feedback,
    join that trace), or of the span it was imported from."""

    def to_json(self) -> str:
        data = asdict(self)
        data["memory_ids"] = list(self.memory_ids)
        return json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> CallRecord:
        data = json.loads(text)
        data["memory_ids"] = tuple(data.get("memory_ids") or ())
        return cls(**data)


def calls_path(home: Home) -> Path:
    """The home's call log: ``PROCMEM_HOME/serve/calls.sqlite`` (serve's calls, imports, the LiteLLM callback)."""
    return home.root / "serve" / "calls.sqlite"


@dataclass(frozen=True)
class FeedbackRecord:
    id: str
    episode_id: str
    body: dict[str, Any]
    received_at: str


@dataclass(frozen=True)
class CallFilter:
    """What the console's episode list asks for; every field is optional (None: any)."""

    session_id: str | None = None
    task_id: str | None = None
    outcome: Literal["passed", "failed", "unverified"] | None = None
    feedback: Literal["any", "none", "correction"] | None = None
    adapter_version: str | None = None
    """A version (``v3``) or ``base``."""
    since: str | None = None
    """ISO time: calls finished at or after it."""
    until: str | None = None
    """ISO time: calls finished before it."""
    text: str | None = None
    """A substring of the question's preview (a scan of the rows the other filters leave)."""


@dataclass(frozen=True)
class CallRow:
    """One call as the console lists it (the indexed columns, not the JSON document)."""

    id: str
    finished_at: str
    status: str
    session_id: str | None
    task_id: str | None
    adapter_version: str
    latency_ms: float
    preview: str
    outcome: str | None
    feedback: int
    corrected: bool


_ROW_COLUMNS = ("id, finished_at, status, session_id, task_id, adapter_version, latency_ms, preview, outcome, "
                "feedback, corrected")


_FEEDBACK_OF_CALL = ("SELECT id, episode_id, data, received_at FROM feedback WHERE tenant = ? AND episode_id = ? "
                     "ORDER BY received_at, rowid")


def _feedback_record(values: Any) -> FeedbackRecord:
    return FeedbackRecord(values[0], values[1], json.loads(values[2]), values[3])


def _row(values: Any) -> CallRow:
    return CallRow(str(values[0]), str(values[1]), str(values[2] or ""), values[3], values[4], str(values[5] or ""),
                   float(values[6] or 0.0), str(values[7] or ""), values[8], int(values[9] or 0), bool(values[10]))


def _preview(call: CallRecord) -> str:
    """The last user message's text, on one line, cut to :data:`_PREVIEW_CHARS`."""
    text = ""
    for message in reversed(call.messages):
        if message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else " ".join(
                str(p.get("text", "")) for p in content or [] if isinstance(p, dict))
            break
    return " ".join(text.split())[:_PREVIEW_CHARS]


def _outcome(call: CallRecord, feedback: list[dict[str, Any]]) -> str | None:
    """The answer's judgement by the one feedback rule (a person's latest judgement wins over the verifier's; a
    correction alone means the answer was wrong): ``passed``, ``failed``, or None while unverified."""
    verdict = Verdict.from_dict(call.verdict) if call.verdict is not None else None
    episode = feedback_episode(Task(id=call.id, prompt="", verifier=call.verifier), call.response,
                               [Feedback.from_dict(f) for f in feedback], verdict=verdict, model_id=call.model_id)
    if episode is None:
        return None
    return "passed" if episode.attempts[0].verdict.passed else "failed"


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
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older log up to :data:`_SCHEMA_VERSION` (idempotent; under the lock, in one transaction)."""
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version >= _SCHEMA_VERSION:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            have = {str(r[1]) for r in self._conn.execute("PRAGMA table_info(calls)")}
            for column, kind in _DERIVED:
                if column not in have:
                    self._conn.execute(f"ALTER TABLE calls ADD COLUMN {column} {kind}")
            for tenant, episode_id in self._conn.execute("SELECT tenant, id FROM calls").fetchall():
                self._refresh(self._conn, tenant, episode_id)
            for statement in filter(str.strip, _INDEXES.split(";")):
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @staticmethod
    def _refresh(conn: sqlite3.Connection, tenant: str, episode_id: str) -> None:
        """Recompute a call's derived columns from its document and its feedback."""
        row = conn.execute("SELECT data FROM calls WHERE tenant = ? AND id = ?", (tenant, episode_id)).fetchone()
        if row is None:
            return
        call = CallRecord.from_json(row[0])
        feedback = [json.loads(r[0]) for r in conn.execute(
            "SELECT data FROM feedback WHERE tenant = ? AND episode_id = ? ORDER BY received_at, rowid",
            (tenant, episode_id))]
        conn.execute(
            "UPDATE calls SET status = ?, session_id = ?, task_id = ?, adapter_version = ?, latency_ms = ?, "
            "preview = ?, outcome = ?, feedback = ?, corrected = ? WHERE tenant = ? AND id = ?",
            (call.status, call.session_id, call.task_id, call.adapter_version or "base", call.latency_ms,
             _preview(call), _outcome(call, feedback), len(feedback), int(any(f.get("correction") for f in feedback)),
             tenant, episode_id))

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
            if cursor.rowcount != 1:
                return False
            self._refresh(conn, call.tenant, call.id)
            return True

    def get(self, tenant: str, episode_id: str) -> CallRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT data FROM calls WHERE tenant = ? AND id = ?",
                                     (tenant, episode_id)).fetchone()
        return CallRecord.from_json(row[0]) if row else None

    def snapshot(self, tenant: str, episode_id: str) -> tuple[CallRecord, list[FeedbackRecord], int] | None:
        """The call, its feedback and its revision, read in one transaction (so the revision is exactly the one
        this call and feedback are at; None when there is no such call)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                row = self._conn.execute("SELECT data, revision FROM calls WHERE tenant = ? AND id = ?",
                                         (tenant, episode_id)).fetchone()
                rows = self._conn.execute(_FEEDBACK_OF_CALL, (tenant, episode_id)).fetchall() if row else []
            finally:
                self._conn.execute("COMMIT")
        if row is None:
            return None
        return CallRecord.from_json(row[0]), [_feedback_record(r) for r in rows], int(row[1])

    def set_verdict(self, tenant: str, episode_id: str, verdict: dict[str, Any]) -> None:
        with self._tx() as conn:
            row = conn.execute("SELECT data FROM calls WHERE tenant = ? AND id = ?", (tenant, episode_id)).fetchone()
            if row is None:
                return
            data = json.loads(row[0])
            data["verdict"] = verdict
            conn.execute("UPDATE calls SET data = ?, revision = revision + 1 WHERE tenant = ? AND id = ?",
                         (json.dumps(data, ensure_ascii=False, sort_keys=True), tenant, episode_id))
            self._refresh(conn, tenant, episode_id)

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
            self._refresh(conn, tenant, episode_id)
            return True

    def feedback(self, tenant: str, episode_id: str) -> list[FeedbackRecord]:
        with self._lock:
            rows = self._conn.execute(_FEEDBACK_OF_CALL, (tenant, episode_id)).fetchall()
        return [_feedback_record(r) for r in rows]

    # --- the console's queries (indexed; see the module docstring) --------------------------------

    def list_calls(self, tenant: str, where: CallFilter | None = None, *, limit: int = 50,
             before: tuple[str, str] | None = None) -> list[CallRow]:
        """Calls matching ``where``, newest first: at most ``limit``, finished before the ``before`` cursor
        ((finished_at, id) of the last row of the previous page: keyset pagination, no OFFSET)."""
        clauses, params = self._where(tenant, where or CallFilter())
        if before is not None:
            clauses.append("(finished_at < ? OR (finished_at = ? AND id < ?))")
            params += [before[0], before[0], before[1]]
        sql = (f"SELECT {_ROW_COLUMNS} FROM calls WHERE {' AND '.join(clauses)} "
               "ORDER BY finished_at DESC, id DESC LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, (*params, limit)).fetchall()
        return [_row(r) for r in rows]

    def row(self, tenant: str, episode_id: str) -> CallRow | None:
        """One call's indexed columns (its judgement, feedback count...)."""
        with self._lock:
            found = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM calls WHERE tenant = ? AND id = ?",
                                       (tenant, episode_id)).fetchone()
        return _row(found) if found else None

    def count_matching(self, tenant: str, where: CallFilter | None = None) -> int:
        clauses, params = self._where(tenant, where or CallFilter())
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM calls WHERE {' AND '.join(clauses)}",
                                          params).fetchone()[0])

    @staticmethod
    def _where(tenant: str, where: CallFilter) -> tuple[list[str], list[Any]]:
        clauses, params = ["tenant = ?"], [tenant]
        for column, value in (("session_id", where.session_id), ("task_id", where.task_id),
                              ("adapter_version", where.adapter_version)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if where.outcome == "unverified":
            clauses.append("outcome IS NULL")
        elif where.outcome:
            clauses.append("outcome = ?")
            params.append(where.outcome)
        if where.feedback == "any":
            clauses.append("feedback > 0")
        elif where.feedback == "none":
            clauses.append("feedback = 0")
        elif where.feedback == "correction":
            clauses.append("feedback > 0 AND corrected = 1")
        if where.since:
            clauses.append("finished_at >= ?")
            params.append(where.since)
        if where.until:
            clauses.append("finished_at < ?")
            params.append(where.until)
        if where.text:
            clauses.append("preview LIKE ? ESCAPE '\\'")
            escaped = where.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params.append(f"%{escaped}%")
        return clauses, params

    def hourly(self, tenant: str, since: str) -> list[tuple[str, int, int, int]]:
        """(hour ``YYYY-MM-DDTHH``, calls, verified, with feedback) per hour since ``since``, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT substr(finished_at, 1, 13) AS hour, COUNT(*), COUNT(outcome), SUM(feedback > 0) FROM calls "
                "WHERE tenant = ? AND finished_at >= ? GROUP BY hour ORDER BY hour", (tenant, since)).fetchall()
        return [(str(r[0]), int(r[1]), int(r[2]), int(r[3] or 0)) for r in rows]

    def pass_rates(self, tenant: str, since: str) -> list[tuple[str, str, int, int]]:
        """(day ``YYYY-MM-DD``, adapter version, judged, passed) of the calls judged since ``since``: the served
        model's learning curve."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT substr(finished_at, 1, 10) AS day, adapter_version, COUNT(outcome), "
                "SUM(outcome = 'passed') FROM calls WHERE tenant = ? AND finished_at >= ? AND outcome IS NOT NULL "
                "GROUP BY day, adapter_version ORDER BY day", (tenant, since)).fetchall()
        return [(str(r[0]), str(r[1] or "base"), int(r[2]), int(r[3] or 0)) for r in rows]

    def totals(self, tenant: str) -> dict[str, int]:
        """Calls, verified calls, calls with feedback and corrected calls of ``tenant``."""
        with self._lock:  # each an index-only count (calls_by_outcome, calls_by_feedback)
            outcomes = dict(self._conn.execute("SELECT outcome, COUNT(*) FROM calls WHERE tenant = ? GROUP BY outcome",
                                               (tenant,)).fetchall())
            feedback, corrected = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(corrected), 0) FROM calls WHERE tenant = ? AND feedback > 0",
                (tenant,)).fetchone()
        return {"calls": sum(int(n) for n in outcomes.values()),
                "verified": int(outcomes.get("passed", 0)) + int(outcomes.get("failed", 0)),
                "with_feedback": int(feedback), "corrected": int(corrected), "passed": int(outcomes.get("passed", 0))}

    def feedback_count(self, tenant: str, since: str | None = None) -> int:
        """Feedback items received (since ``since``)."""
        with self._lock:
            if since is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM feedback WHERE tenant = ?",
                                              (tenant,)).fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback WHERE tenant = ? AND received_at >= ?",
                                          (tenant, since)).fetchone()[0])

    def adapter_versions(self, tenant: str) -> list[str]:
        """The adapter versions that answered ``tenant``'s calls (``base`` for none)."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT adapter_version FROM calls WHERE tenant = ?",
                                      (tenant,)).fetchall()
        return sorted(str(r[0] or "base") for r in rows)

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
