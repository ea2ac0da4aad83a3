"""``procmem import`` of OpenAI chat JSONL, LiteLLM payloads and a Langfuse export: only scored or judged calls become
verified episodes, an import is idempotent, and every bad record is located while the rest imports."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

from serve_helpers import PROCMEM

from procmem.core import Home
from procmem.memory import open_memory
from procmem.serve.calllog import CallLog, calls_path
from procmem.serve.ingest import import_file


def _procmem(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROCMEM), "--home", str(home), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ})


def _report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _experiences(home: Path, tenant_dir: Path | None = None) -> list[Any]:
    memory = open_memory(tenant_dir or Home(home).chroma)
    try:
        return memory.episodes()
    finally:
        memory.close()


def _langfuse_export(path: Path, n: int = 1000, scored: int = 200) -> set[str]:
    """A Langfuse export as its public API returns traces (camelCase, observations and scores inline); a quarter of
    the scores come as separate blob-export score rows (snake_case) after the traces. Returns the scored ids."""
    rng = random.Random(7)
    chosen = set(rng.sample(range(n), scored))
    lines, loose = [], []
    for i in range(n):
        trace_id = f"lf-trace-{i:04d}"
        question = f"What is {i} + {i % 7}?"
        trace: dict[str, Any] = {
            "id": trace_id, "timestamp": f"2026-11-{1 + i % 28:02d}T10:00:00.000Z", "name": "qa",
            "input": [{"role": "user", "content": question}] if i % 2 else {"messages": [
                {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]},
            "output": {"role": "assistant", "content": str(i + i % 7 + (i % 3 == 0))},
            "sessionId": f"sess-{i % 10}", "userId": f"user-{i % 5}", "metadata": {}, "tags": ["prod"],
            "observations": [{"id": f"obs-{i}", "traceId": trace_id, "type": "GENERATION", "model": "gpt-4o-mini",
                              "startTime": "2026-11-01T10:00:00.000Z",
                              "usageDetails": {"input": 12, "output": 3, "total": 15}}],
            "scores": [],
        }
        if i in chosen:
            kind = ("BOOLEAN", "NUMERIC", "CATEGORICAL")[i % 3]
            score: dict[str, Any] = {"id": f"score-{i}", "traceId": trace_id, "name": "correct", "dataType": kind,
                                     "source": "ANNOTATION", "comment": "checked"}
            if kind == "BOOLEAN":
                score.update(value=float(i % 2), stringValue="True" if i % 2 else "False")
            elif kind == "NUMERIC":
                score["value"] = 1.0 if i % 2 else 0.25
            else:
                score["stringValue"] = "correct" if i % 2 else "incorrect"
            if i % 4 == 0:
                loose.append({"id": score["id"], "trace_id": trace_id, "name": "correct", "data_type": kind,
                              "value": score.get("value"), "string_value": score.get("stringValue"),
                              "source": "ANNOTATION"})
            else:
                trace["scores"].append(score)
        lines.append(trace)
    path.write_text("".join(json.dumps(x) + "\n" for x in [*lines, *loose]))
    return {f"lf-trace-{i:04d}" for i in chosen}


def test_a_langfuse_export_of_1000_traces_with_200_scored_gives_200_verified_episodes_once(tmp_path: Path) -> None:
    export = tmp_path / "langfuse-traces.jsonl"
    scored = _langfuse_export(export)
    home = tmp_path / "home"
    first = _procmem(home, "import", str(export), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    report = _report(first)
    assert report["format"] == "langfuse" and report["read"] == 1000 and report["new_calls"] == 1000
    assert report["new_feedback"] == 200 and report["episodes"] == 200 and report["errors"] == []
    episodes = _experiences(home)
    assert len(episodes) == 200 and {e.id for e in episodes} == scored
    one = episodes[0]
    assert one.task.metadata["source"] == "langfuse" and one.model_id == "gpt-4o-mini"
    assert one.attempts[-1].verdict.details["source"] == "human"
    second = _procmem(home, "import", str(export), "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    again = _report(second)
    assert (again["new_calls"], again["new_feedback"], again["episodes"]) == (0, 0, 0)
    assert len(_experiences(home)) == 200
    log = CallLog(calls_path(Home(home)))
    try:
        assert log.count("default") == 1000
    finally:
        log.close()


def test_openai_jsonl_bad_lines_are_located_and_the_rest_imports(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
         "passed": True, "session_id": "s1"},
        "this is not json",
        {"messages": [{"role": "user", "content": "What is 3 + 3?"}, {"role": "assistant", "content": "7"}],
         "feedback": {"passed": False, "correction": "6"}},
        {"messages": [{"role": "user", "content": "Hi"}], "score": 2.0, "response": "Hello"},
        {"messages": "nope"},
        {"id": "kept-1", "messages": [{"role": "user", "content": "What is 9 + 1?"}], "response": "10",
         "verifier": "numeric:10"},
        {"messages": [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."}]},
    ]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    home = tmp_path / "home"
    done = _procmem(home, "import", str(path), "--json")
    assert done.returncode == 2
    assert "chats.jsonl:2: not JSON" in done.stderr
    assert "chats.jsonl:4: feedback score" in done.stderr and "chats.jsonl:5: messages must be" in done.stderr
    report = _report(done)
    assert report["read"] == 4 and report["new_calls"] == 4 and report["episodes"] == 3
    by_id = {e.id: e for e in _experiences(home)}
    assert by_id["kept-1"].passed and by_id["kept-1"].task.verifier == "numeric:10"
    corrected = next(e for e in by_id.values() if "3 + 3" in e.task.prompt)
    assert [a.answer for a in corrected.attempts] == ["7", "6"] and corrected.passed


def test_litellm_payloads_logged_by_litellm_import(tmp_path: Path) -> None:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger

    payloads: list[dict[str, Any]] = []

    class Keep(CustomLogger):
        def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
            payloads.append(kwargs["standard_logging_object"])

    keep = Keep()
    saved = litellm.callbacks
    litellm.callbacks = [keep]
    try:
        router = litellm.Router(model_list=[{"model_name": "gpt-x", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_key": "sk-fake", "mock_response": "42"}}])
        router.completion(model="gpt-x", messages=[{"role": "user", "content": "What is 40 + 2?"}])
        router.completion(model="gpt-x", messages=[{"role": "user", "content": "What is 41 + 1?"}])
        _wait(lambda: len(payloads) == 2)
    finally:
        litellm.callbacks = saved
    payloads[0]["metadata"]["requester_metadata"] = {"procmem_feedback": {"passed": True}, "team": "a"}
    path = tmp_path / "litellm.jsonl"
    path.write_text("".join(json.dumps(p, default=str) + "\n" for p in payloads) + '{"status": "failure"}\n')
    home = Home(tmp_path / "home").ensure()
    report = import_file(path, home)
    assert report.format == "litellm" and report.new_calls == 2 and report.episodes == 1
    assert len(report.errors) == 1 and report.errors[0].where == "litellm.jsonl:3"
    (episode,) = _experiences(tmp_path / "home")
    assert episode.id == payloads[0]["id"] and episode.attempts[0].answer == "42" and episode.passed
    assert import_file(path, home).new_calls == 0


def _wait(predicate: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
