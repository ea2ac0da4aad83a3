"""`procmem distill ...` and `procmem adapters ...` end to end on the tiny model (`local:tiny`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import Home

CONFIG = """
model = "local:tiny"
[traces]
k = 2
max_tokens = 4
[lora]
rank = 2
alpha = 4.0
dropout = 0.0
[train]
epochs = 1
batch_size = 4
[gate]
n_test = 6
n_holdout = 0
min_improvement = {min_improvement}
level = 1.0
max_tokens = 4
"""


def _invoke(home: Home, *args: str) -> Any:
    return CliRunner().invoke(app, ["--home", str(home.root), *args])


def _last_json(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "distill.toml"
    path.write_text(CONFIG.format(min_improvement=0.0))
    return path


@pytest.fixture
def solved(home: Home, suite_file: Path) -> Home:
    """The memory issue's scenario, in small: the agent solved 6 train tasks on the tiny model."""
    result = _invoke(home, "solve", "--suite", str(suite_file), "--model", "local:tiny", "--n", "6", "--json")
    assert result.exit_code == 0, result.output
    return home


def test_distill_once_registers_v1_and_adapters_ls_lists_it(solved: Home, config_file: Path, tmp_path: Path,
                                                             niceness: list[int]) -> None:
    home = solved
    result = _invoke(home, "distill", "--once", "--json", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert niceness == [0, 10]  # niced by default (train.nice), beside a live `procmem serve`
    out = _last_json(result.stdout)
    assert out["status"] == "promoted" and out["version"] == "v1" and out["promoted"] is True
    assert out["traces"] >= 1 and out["problems"] == 6 and out["episodes"] == 6
    assert out["gate"]["passed"] is True and out["gate"]["rows"][0]["n"] == 6
    assert out["train"]["steps"] >= 1

    listed = _invoke(home, "adapters", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    data = _last_json(listed.stdout)
    assert data["promoted"] == "v1" and [a["version"] for a in data["adapters"]] == ["v1"]
    v1 = data["adapters"][0]
    assert v1["promoted"] is True and v1["objective"] == "sft" and v1["base_model"]["id"] == "local:tiny"
    assert len(v1["dataset"]["episode_ids"]) == 6 and v1["gate"]["passed"] is True
    assert (home.adapters / "v1" / "adapter_config.json").exists()

    shown = _invoke(home, "adapters", "show", "v1", "--json")
    assert shown.exit_code == 0 and _last_json(shown.stdout) == {k: v for k, v in v1.items() if k != "promoted"}
    table = _invoke(home, "adapters", "ls")
    assert table.exit_code == 0 and "v1" in table.stdout

    again = _invoke(home, "distill", "--once", "--json", "--config", str(config_file))
    assert again.exit_code == 0 and _last_json(again.stdout)["status"] == "skipped"
    assert niceness == [0, 10, 0]  # already at train.nice: not reniced again

    for fmt, key in (("openai", "messages"), ("trl", "prompt")):
        target = tmp_path / f"{fmt}.jsonl"
        exported = _invoke(home, "distill", "export", str(target), "--format", fmt, "--json")
        assert exported.exit_code == 0, exported.output
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        assert len(rows) == out["traces"] == _last_json(exported.stdout)["rows"] and key in rows[0]

    rolled = _invoke(home, "adapters", "rollback", "--json")
    assert rolled.exit_code == 0 and _last_json(rolled.stdout)["current"] is None
    promoted = _invoke(home, "adapters", "promote", "v1", "--json")
    assert promoted.exit_code == 0 and _last_json(promoted.stdout)["current"] == "v1"


def test_a_refused_adapter_needs_force_to_be_promoted(solved: Home, tmp_path: Path) -> None:
    strict = tmp_path / "strict.toml"
    strict.write_text(CONFIG.format(min_improvement=0.5))
    result = _invoke(solved, "distill", "--once", "--json", "--config", str(strict))
    assert result.exit_code == 0, result.output
    out = _last_json(result.stdout)
    assert out["status"] == "rejected" and out["version"] == "v1" and not out["promoted"]
    refused = _invoke(solved, "adapters", "promote", "v1")
    assert refused.exit_code == 2 and "failed its promotion gate" in refused.output
    assert "Traceback" not in refused.output
    forced = _invoke(solved, "adapters", "promote", "v1", "--force", "--json")
    assert forced.exit_code == 0 and _last_json(forced.stdout)["current"] == "v1"
    assert _last_json(_invoke(solved, "adapters", "show", "v1", "--json").stdout)["forced"] is True


def test_distill_every_runs_ticks_and_prints_a_json_line_per_tick(solved: Home, config_file: Path) -> None:
    result = _invoke(solved, "distill", "--every", "0.1s", "--ticks", "2", "--json", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    assert [line["status"] for line in lines] == ["promoted", "skipped"]
    log = (solved.root / "distill" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in log] == ["promoted", "skipped"]


def test_the_lock_stops_a_second_distill_job(solved: Home, config_file: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
         "lock.acquire(); print('locked', flush=True); time.sleep(60)", str(solved.locks / "distill.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = _invoke(solved, "distill", "--once", "--json", "--config", str(config_file))
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2
    assert "another distillation job is running" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (("distill",), "pass exactly one of --once and --every"),
    (("distill", "--once", "--every", "6h"), "pass exactly one of --once and --every"),
    (("distill", "--every", "soon"), "not an interval"),
    (("distill", "--once", "--objective", "magic"), "objective"),
    (("distill", "--once", "--model", "litellm:openai/gpt-4o-mini"), "training needs local weights"),
    (("adapters", "show", "v9"), "adapter v9 does not exist"),
    (("adapters", "promote", "latest"), "not an adapter version"),
    (("adapters", "rollback"), "nothing to roll back"),
    (("distill", "export", "out.jsonl"), "no traces to export"),
    (("distill", "export", "out.jsonl", "--format", "csv"), "unknown export format"),
])
def test_bad_input_is_one_line_and_exit_code_2(home: Home, args: tuple[str, ...], message: str) -> None:
    result = _invoke(home, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_teacher_reads_worked_examples_and_validated_advice_only(solved: Home, config_file: Path) -> None:
    """`distill --once` as a user runs it: a reflected insight nobody has validated yet reaches the agent, not the
    teacher whose answers become the weights; an operator's playbook reaches both."""
    from procmem.core.keys import problem_key
    from procmem.memory import open_memory
    from procmem.memory._entries import Entry, entry_id

    memory = open_memory(solved.chroma)
    solved_episode = next(e for e in memory.episodes(split="train") if e.passed)
    suite, key = solved_episode.task.suite, problem_key(solved_episode.task.prompt)
    guess = "Multiply every number in the question by seven before you answer."
    memory.write_entry(Entry(id=entry_id("insight", "strategy", "train", key, guess), level="insight",
                             kind="strategy", text=guess, suite=suite, split="train", policy_version="tiny@base",
                             reflector="tiny@base", problem=key, problem_ids=(key,)))
    assert guess in memory.retriever().retrieve(solved_episode.task, 3).text, "the agent gets it"
    memory.close()
    playbook = "Answer in one short sentence."
    added = _invoke(solved, "memory", "add", "--scope", suite, playbook)
    assert added.exit_code == 0, added.output

    result = _invoke(solved, "distill", "--once", "--json", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    [contexts] = list(solved.root.rglob("traces/contexts.jsonl"))
    teacher_prompts = [json.loads(line)["teacher_prompt"] for line in contexts.read_text().splitlines()]
    assert len(teacher_prompts) == 6
    assert all(playbook in p for p in teacher_prompts) and not any(guess in p for p in teacher_prompts)
    worked = f"Question: {solved_episode.task.prompt}\nAnswer:"
    assert sum(worked in p for p in teacher_prompts) >= 1, "the solved problem is a worked example for the others"
