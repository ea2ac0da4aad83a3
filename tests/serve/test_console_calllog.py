"""The call log's console columns: a log written before them is migrated on open (columns filled from the JSON,
indexes built), every write keeps them current, and the list is paged by a keyset cursor with indexed filters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from procmem.serve.calllog import CallFilter, CallLog, CallRecord

_OLD_SCHEMA = """
CREATE TABLE calls (tenant TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, revision INTEGER NOT NULL DEFAULT 1,
    memorized INTEGER NOT NULL DEFAULT 0, finished_at TEXT NOT NULL, PRIMARY KEY (tenant, id));
CREATE TABLE feedback (tenant TEXT NOT NULL, id TEXT NOT NULL, episode_id TEXT NOT NULL, data TEXT NOT NULL,
    received_at TEXT NOT NULL, PRIMARY KEY (tenant, id));
"""


def _call(i: int, *, session: str = "s1", adapter: str | None = None, verifier: str = "", minute: int = 0,
          text: str = "") -> CallRecord:
    at = f"2026-01-01T{10 + i // 60:02d}:{i % 60:02d}:{minute:02d}.000+00:00"
    return CallRecord(id=f"e{i:03d}", tenant="default", status="complete", model_id="m", adapter_version=adapter,
                      messages=[{"role": "user", "content": text or f"What is {i} + 1?"}], prompt="p",
                      response=str(i + 1), finish_reason="stop", usage={}, latency_ms=5.0, started_at=at,
                      finished_at=at, session_id=session, verifier=verifier)


def test_an_old_log_is_migrated_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    for i in range(3):
        call = _call(i)
        conn.execute("INSERT INTO calls (tenant, id, data, finished_at) VALUES (?, ?, ?, ?)",
                     ("default", call.id, call.to_json(), call.finished_at))
    conn.execute("INSERT INTO feedback VALUES ('default', 'f1', 'e001', ?, '2026-01-02')",
                 (json.dumps({"correction": "9"}),))
    conn.execute("INSERT INTO feedback VALUES ('default', 'f2', 'e002', ?, '2026-01-02')",
                 (json.dumps({"passed": True}),))
    conn.commit()
    conn.close()

    log = CallLog(path)
    rows = {r.id: r for r in log.list_calls("default")}
    assert [r.id for r in log.list_calls("default")] == ["e002", "e001", "e000"]  # newest first
    assert (rows["e000"].outcome, rows["e001"].outcome, rows["e002"].outcome) == (None, "failed", "passed")
    assert rows["e001"].corrected and rows["e001"].feedback == 1 and rows["e000"].preview == "What is 0 + 1?"
    assert log.totals("default") == {"calls": 3, "verified": 2, "with_feedback": 2, "corrected": 1, "passed": 1}
    log.close()
    again = sqlite3.connect(path)
    assert again.execute("PRAGMA user_version").fetchone()[0] == 1
    indexes = {r[0] for r in again.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"calls_recent", "calls_by_session", "calls_by_outcome", "calls_by_adapter"} <= indexes
    again.close()
    CallLog(path).close()  # a second open changes nothing


def test_writes_keep_the_columns_current_by_the_one_feedback_rule(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.sqlite")
    log.record(_call(0, verifier="numeric:1"))
    assert log.row("default", "e000").outcome is None  # type: ignore[union-attr]
    log.set_verdict("default", "e000", {"passed": True, "score": 1.0, "feedback": "", "details": {}})
    assert log.row("default", "e000").outcome == "passed"  # type: ignore[union-attr]
    log.add_feedback("default", "e000", "f1", {"passed": False})  # a person's judgement wins over the verifier
    assert log.row("default", "e000").outcome == "failed"  # type: ignore[union-attr]
    log.add_feedback("default", "e001", "f2", {"correction": "2"})  # feedback before its call is recorded
    log.record(_call(1))
    row = log.row("default", "e001")
    assert row is not None and row.outcome == "failed" and row.corrected and row.feedback == 1


def test_the_list_is_filtered_and_paged_by_a_cursor(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.sqlite")
    for i in range(120):
        log.record(_call(i, session=f"s{i % 3}", adapter="v1" if i >= 60 else None,
                         text="100% <b>odd</b>" if i == 7 else ""))
        if i % 4 == 0:
            log.add_feedback("default", f"e{i:03d}", f"f{i}", {"passed": i % 8 == 0})
    pages, before = [], None
    while True:
        page = log.list_calls("default", CallFilter(session_id="s1"), limit=15, before=before)
        if not page:
            break
        pages.append(page)
        before = (page[-1].finished_at, page[-1].id)
    ids = [r.id for page in pages for r in page]
    assert len(ids) == 40 == len(set(ids)) == log.count_matching("default", CallFilter(session_id="s1"))
    assert ids == sorted(ids, reverse=True)
    assert log.count_matching("default", CallFilter(adapter_version="base")) == 60
    assert log.count_matching("default", CallFilter(outcome="passed")) == 15
    assert log.count_matching("default", CallFilter(outcome="unverified")) == 90
    assert log.count_matching("default", CallFilter(feedback="any")) == 30
    assert log.count_matching("default", CallFilter(since="2026-01-01T11:00", until="2026-01-01T11:30")) == 30
    assert [r.id for r in log.list_calls("default", CallFilter(text="100%"))] == ["e007"]  # LIKE wildcards escaped
    assert [r.id for r in log.list_calls("default", CallFilter(text="_"))] == []
    assert sum(n for _, n, _, _ in log.hourly("default", "2026-01-01")) == 120
    assert {(v, judged) for _, v, judged, _ in log.pass_rates("default", "2026-01-01")} == {("base", 15), ("v1", 15)}
    plan = log._conn.execute("EXPLAIN QUERY PLAN SELECT id FROM calls WHERE tenant = 'default' AND session_id = 's1' "
                             "ORDER BY finished_at DESC LIMIT 50").fetchall()
    assert "calls_by_session" in str(plan)
