"""`procmem memory stats|ls|show|search|reflect|prune|export|import` in process, on real Chroma."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from memory_helpers import SUMS, ScriptedPolicy, episode
from typer.testing import CliRunner

from procmem.cli import app
from procmem.cli.memory_cmd import parse_since
from procmem.core import Home, ProcmemError
from procmem.memory import ProceduralMemory, open_memory
from procmem.memory.embedding import MiniLMEmbedder


def _run(home: Home, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(home.root), "memory", *args])


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def filled(home: Home, minilm: MiniLMEmbedder) -> ProceduralMemory:
    memory = open_memory(home.chroma, embedder=minilm)
    for task_id, prompt, answers in SUMS:
        memory.record(episode(task_id, prompt, answers))
    memory.reflect(ScriptedPolicy(), feedback=False)  # the scripted insights only (verifier lessons: own tests)
    return memory


def test_stats_counts_levels_and_active_versus_retired(home: Home, filled: ProceduralMemory) -> None:
    stats = _json(_run(home, "stats", "--json"))
    assert stats["experience"] == 3 and stats["insight"] == 2 and stats["pattern"] >= 1
    assert stats["active"] == {"insight": 2, "pattern": stats["pattern"]}
    assert stats["retired"] == {"insight": 0, "pattern": 0}
    table = _run(home, "stats")
    assert table.exit_code == 0 and "insight" in table.stdout and "retired" in table.stdout


def test_ls_show_and_search(home: Home, filled: ProceduralMemory) -> None:
    listed = _json(_run(home, "ls", "--level", "insight", "--json"))["records"]
    assert {r["level"] for r in listed} == {"insight"} and len(listed) == 2
    shown = _json(_run(home, "show", listed[0]["id"], "--json"))
    assert shown["id"] == listed[0]["id"] and shown["source_episode_ids"] and shown["evidence"]
    assert shown["policy_version"] == "scripted-policy@base" and shown["status"] == "active"
    ep_id = filled.episodes()[0].id
    shown_episode = _json(_run(home, "show", ep_id, "--json"))
    assert shown_episode["episode"]["id"] == ep_id and shown_episode["passed"] is True
    found = _json(_run(home, "search", "carry the tens digit", "--level", "insight", "--k", "1", "--json"))
    assert found["results"][0]["text"].startswith("Add the ones digits first")
    assert _run(home, "ls").exit_code == 0


def test_export_then_import_into_another_home(home: Home, filled: ProceduralMemory, tmp_path: Path) -> None:
    file = tmp_path / "mem.jsonl"
    exported = _json(_run(home, "export", str(file), "--json"))
    other = Home(tmp_path / "other").ensure()
    imported = _json(_run(other, "import", str(file), "--json"))
    assert sum(imported[level] for level in ("experience", "insight", "pattern")) == exported["records"]
    again = tmp_path / "again.jsonl"
    _json(_run(other, "export", str(again), "--json"))
    assert again.read_bytes() == file.read_bytes()


def test_a_malformed_import_is_one_located_line_exit_2_and_imports_nothing(home: Home, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"level": "insight", "id": "x", "text": "t", "metadata": {}, "payload": {}}
    bad.write_text(json.dumps(good) + "\n{oops\n")
    result = _run(home, "import", str(bad))
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith("error:") and f"{bad}:1" in message and len(message.splitlines()) == 1
    assert _json(_run(home, "stats", "--json"))["insight"] == 0


@pytest.mark.parametrize(("args", "where"), [
    (("ls", "--level", "episodes"), "--level"),
    (("ls", "--status", "asleep"), "--status"),
    (("show", "no-such-id"), "ID"),
    (("reflect", "--since", "yesterday-ish", "--model", "local:tiny"), "--since"),
])
def test_bad_input_is_one_line_and_exit_2(home: Home, args: tuple[str, ...], where: str) -> None:
    result = _run(home, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: {where}") and "Traceback" not in result.output


def test_reflect_with_the_tiny_model_reports_cost_and_is_bounded_and_idempotent(
    home: Home, minilm: MiniLMEmbedder, tiny_model_dir: Path
) -> None:
    memory = open_memory(home.chroma, embedder=minilm)
    for task_id, prompt, answers in SUMS:
        memory.record(episode(task_id, prompt, answers))
    model = f"local:{tiny_model_dir}"
    first = _json(_run(home, "reflect", "--model", model, "--max-calls", "2", "--no-feedback", "--json"))
    assert first["calls"] == 2 and first["over_budget"] == 1
    assert first["retries"] == 2 and first["total_calls"] == 4, "transformers: one sampled retry per unparseable call"
    assert first["constrained_calls"] == 0 and first["parse_rate"] == 0.0
    assert first["unparseable"] == 2 and first["insights_added"] == 0 and first["completion_tokens"] > 0
    assert first["memory"]["insight"] == 0
    second = _json(_run(home, "reflect", "--model", model, "--no-feedback", "--json"))
    assert second["calls"] == 1 and second["already_reflected"] == 2
    third = _json(_run(home, "reflect", "--model", model, "--no-feedback", "--json"))
    assert third["total_calls"] == 0 and third["already_reflected"] == 3


def test_prune_reports_per_level(home: Home, filled: ProceduralMemory) -> None:
    report = _json(_run(home, "prune", "--dry-run", "--json"))
    assert report["dry_run"] is True
    assert report["evicted"] == {"experience": 0, "insight": 0, "pattern": 0}
    assert report["retired"] == {"insight": 0, "pattern": 0}


def test_a_later_solve_retrieves_insights_and_patterns_and_counts_their_use(
    home: Home, filled: ProceduralMemory, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Issue 3, "done means" step 4 on the tiny model: new items of the same task get the entries, the
    trajectory records which ones it used, and their counters move."""
    tasks = tmp_path / "new_sums.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"n{i}", "prompt": f"What is {a} + {b}?", "verifier": "regex:(?s).*"})
                             + "\n" for i, (a, b) in enumerate([(52, 36), (14, 73)])))
    solved = CliRunner().invoke(app, ["--home", str(home.root), "solve", "--suite", str(tasks), "--n", "2",
                                      "--model", f"local:{tiny_model_dir}", "--attempts", "1", "--reflect", "--json"])
    assert solved.exit_code == 0, solved.output
    insight_ids = {e.id for e in filled.entries("insight")}
    pattern_ids = {e.id for e in filled.entries("pattern")}
    new_episodes = [e for e in filled.episodes() if e.task.id.startswith("n")]
    assert len(new_episodes) == 2
    for ep in new_episodes:
        assert insight_ids <= set(ep.memory_ids), "the trajectory records the insights it used"
        assert pattern_ids & set(ep.memory_ids)
    for entry_ in filled.entries("insight"):
        assert (entry_.uses, entry_.helpful, entry_.harmful) == (2, 2, 0)  # regex:.* passes everything
    marks = {r.id: r.metadata.get("reflected") for r in filled.store.get("experience", [e.id for e in new_episodes])}
    assert all(marks.values()), "--reflect reflected inline on each new problem (the tiny model: unparseable)"
    assert filled.stats()["insight"] == len(insight_ids), "noise from the tiny model is never stored"
    cost = _json(solved)["reflection"]
    assert cost["calls"] == 2 and cost["unparseable"] == 2 and cost["completion_tokens"] > 0


def test_since_accepts_iso_times_and_ages() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2026-03-01", now=now) == "2026-03-01T00:00:00.000+00:00"
    assert parse_since("12h", now=now) == "2026-03-10T00:00:00.000+00:00"
    assert parse_since("2d", now=now) == "2026-03-08T12:00:00.000+00:00"
    with pytest.raises(ProcmemError, match="--since"):
        parse_since("last tuesday")
