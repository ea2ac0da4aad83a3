"""`procmem solve`, `verify` and `memory stats` end to end on the tiny model, plus bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home
from procmem.memory import open_memory
from procmem.verifiers import build_verifier


def _invoke(runner: CliRunner, home: Home, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["--home", str(home.root), *args])


def _last_json(output: str) -> dict:  # type: ignore[type-arg]
    return json.loads(output.strip().splitlines()[-1])


def _solve(runner: CliRunner, home: Home, tiny_model_dir: Path, suite: Path, *extra: str):  # type: ignore[no-untyped-def]
    return _invoke(runner, home, "solve", "--suite", str(suite), "--model", f"local:{tiny_model_dir}",
                   "--n", "6", "--attempts", "2", "--json", *extra)


def test_solve_records_every_episode_with_its_verdicts(
    runner: CliRunner, home: Home, tiny_model_dir: Path, task_file: Path
) -> None:
    result = _solve(runner, home, tiny_model_dir, task_file)
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["n"] == 6 and summary["passed"] == 3 and summary["episodes_recorded"] == 6
    assert summary["accuracy"] == pytest.approx(0.5) and summary["suite"] == str(task_file)
    memory = open_memory(home.chroma)
    assert memory.stats()["experience"] == 6
    episodes = memory.episodes()
    assert sorted(e.task.id for e in episodes) == [f"q{i}" for i in range(6)]
    for episode in episodes:
        assert episode.passed == (int(episode.task.id[1:]) % 2 == 1)
        assert len(episode.attempts) == (1 if episode.passed else 2)
        verifier = build_verifier(episode.task)
        assert all(verifier.verify(a.answer) == a.verdict for a in episode.attempts)

    stats = _invoke(runner, home, "memory", "stats", "--json")
    assert stats.exit_code == 0 and _last_json(stats.stdout)["experience"] == 6


def test_verify_prints_the_verdict(runner: CliRunner, home: Home, tmp_path: Path) -> None:
    task = tmp_path / "one.jsonl"
    task.write_text(json.dumps({"id": "a", "prompt": "2+2?", "verifier": "exact:4"}) + "\n")
    good = _invoke(runner, home, "verify", "--task", str(task), "--answer", " 4 ", "--json")
    bad = _invoke(runner, home, "verify", "--task", str(task), "--answer", "five", "--json")
    assert _last_json(good.stdout)["passed"] is True
    verdict = _last_json(bad.stdout)
    assert verdict["passed"] is False and verdict["feedback"] and "4" not in verdict["feedback"]


def _bad_inputs(tmp_path: Path, tiny: Path) -> dict[str, list[str]]:
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text('{"id": "a", "prompt": "p", "verifier": "exact:1"}\n{"id": "b", "prompt": \n')
    return {
        f"{malformed}:2": ["solve", "--suite", str(malformed), "--model", f"local:{tiny}"],
        "rg:no_such_dataset": ["solve", "--suite", "rg:no_such_dataset", "--model", f"local:{tiny}"],
        "--model": ["solve", "--suite", "builtin:arith", "--model", "nonsense:model"],
        "OPENAI_API_KEY": ["solve", "--suite", "builtin:arith", "--n", "1", "--model", "litellm:openai/gpt-4o-mini"],
        # loaded in the background while the tasks are built: its error still ends the command
        "missing.gguf": ["solve", "--suite", "builtin:arith", "--n", "1", "--model", f"local:{tmp_path}/missing.gguf"],
    }


def test_bad_input_is_one_located_line_with_exit_2_and_memory_untouched(
    runner: CliRunner, home: Home, tiny_model_dir: Path, task_file: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _solve(runner, home, tiny_model_dir, task_file).exit_code == 0
    before = sorted(json.dumps(e.to_dict(), sort_keys=True) for e in open_memory(home.chroma).episodes())
    for expected, args in _bad_inputs(tmp_path, tiny_model_dir).items():
        result = _invoke(runner, home, *args)
        assert result.exit_code == 2, (args, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
        assert result.stderr.strip().endswith(errors[0]), result.stderr  # the error is the last word
        assert "Traceback" not in result.output
    after = sorted(json.dumps(e.to_dict(), sort_keys=True) for e in open_memory(home.chroma).episodes())
    assert after == before


def test_solve_on_llama_cpp_loads_the_model_while_the_tasks_are_built(runner: CliRunner, home: Home,
                                                                        task_file: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    result = _invoke(runner, home, "solve", "--suite", str(task_file), "--model", "local:tiny", "--engine", "llamacpp",
                     "--n", "6", "--attempts", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = _last_json(result.stdout)
    assert summary["n"] == 6 and summary["episodes_recorded"] == 6
    assert open_memory(home.chroma).stats()["experience"] == 6


def test_an_interrupted_run_resumes_without_solving_again(
    runner: CliRunner, home: Home, tiny_model_dir: Path, task_file: Path
) -> None:
    first = _last_json(_solve(runner, home, tiny_model_dir, task_file).stdout)
    again = _solve(runner, home, tiny_model_dir, task_file, "--resume", first["run_id"])
    summary = _last_json(again.stdout)
    assert summary["resumed"] == 6 and summary["episodes_recorded"] == 0
    assert open_memory(home.chroma).stats()["experience"] == 6


def test_demo_solves_records_and_shows_the_table_and_memory(
    runner: CliRunner, home: Home, tiny_model_dir: Path
) -> None:
    """The quickstart job, on the tiny model (the README runs it on the bundled one)."""
    result = _invoke(runner, home, "demo", "--n", "3", "--model", f"local:{tiny_model_dir}")
    assert result.exit_code == 0, result.output
    for column in ("n", "passed", "accuracy", "mean attempts", "wall time", "tokens/s"):
        assert column in result.stdout
    assert "chain_sum" in result.stdout and "[train]" in result.stdout
    assert "experience" in result.stdout and "insight" in result.stdout
    assert open_memory(home.chroma).stats()["experience"] == 3
