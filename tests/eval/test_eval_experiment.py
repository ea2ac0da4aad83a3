"""The evidence experiment, end to end on the tiny model: every arm, stage and output file, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import jsonl_suite
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import ProcmemError, Task, load_config
from procmem.eval import (
    ARMS,
    RESULTS_SCHEMA,
    EvalConfig,
    PlaceboRetriever,
    bootstrap_ci,
    run_experiment,
    trace_counts,
)
from procmem.memory import Retrieval

REPO = Path(__file__).resolve().parents[2]


def _suite(path: Path, name: str, passable: bool) -> str:
    return jsonl_suite(path, name, passable, n_train=6, n_test=10)


def _config(tmp_path: Path, **overrides: object) -> EvalConfig:
    smoke = load_config(EvalConfig, REPO / "eval" / "configs" / "smoke.toml")
    update = {"train_suites": (_suite(tmp_path, "easy", True), _suite(tmp_path, "hard", False)),
              "holdout_suites": (_suite(tmp_path, "other", True),), "n_train": 3, "n_test": 3, "n_holdout": 2,
              "n_dev": 2, "train_pool": 2.0, "evaluate_every_round": True,
              **overrides}
    return smoke.model_copy(update=update)


def test_every_arm_scores_the_same_items_each_round_and_a_rerun_resumes(tmp_path: Path) -> None:
    config = _config(tmp_path, seeds=(0,), rounds=2)
    out = tmp_path / "out"
    scores = run_experiment(config, out, quiet=True)

    # every arm has its own rows; pmd-frozen starts in round 2 (in round 1 it IS pmd, and is never scored twice)
    assert {(s.arm, s.round) for s in scores} == {(arm, r) for arm in ARMS for r in (1, 2)} - {("pmd-frozen", 1)}
    assert not (out / "seed0" / "round1" / "pmd-frozen").exists()
    for s in scores:
        assert [len(v) for v in s.test.values()] == [3, 3]
        assert s.test[config.train_suites[0]] == [True] * 3  # any answer passes
        assert s.test[config.train_suites[1]] == [False] * 3
    rft = [s for s in scores if s.arm == "rft"]
    keep = config.distill.traces.keep_per_problem
    assert rft[0].train_examples == 3  # round 1: the three verified "easy" successes, nothing else
    assert 3 <= rft[1].train_examples <= 3 * keep  # round 2 adds distinct verified answers, capped per task
    assert (out / "seed0" / "round2" / "rft" / "train" / "adapter" / "adapter_config.json").exists()
    assert (out / "seed0" / "memory-frozen").is_dir()
    reflection = json.loads((out / "seed0" / "round1" / "reflect.json").read_text())
    assert reflection["calls"] <= config.reflect_max_calls and reflection["stats"]["experience"] >= 6
    by_arm = {s.arm: s for s in scores if s.round == 1}
    assert by_arm["base+memory"].holdout == {}
    traces = {(row["arm"], row["round"]): row for row in trace_counts(config, out)}
    assert set(traces) == {(arm, r) for arm in ("rft", "pmd", "placebo") for r in (1, 2)} | {("pmd-frozen", 2)}
    easy, hard = config.train_suites
    assert traces[("rft", 1)] == {"seed": 0, "round": 1, "arm": "rft", "problems": 0, "candidates": 0,
                                  "verified_problems": 3, "verified_by_suite": {easy: 3}}
    teacher = traces[("pmd", 1)]
    assert teacher["problems"] == 6 and teacher["candidates"] == 6 * config.distill.traces.k
    assert teacher["verified_by_suite"] == {easy: 3} and hard not in teacher["verified_by_suite"]

    stamp = (out / "seed0" / "round1" / "rft" / "scores.json").stat().st_mtime_ns
    again = run_experiment(config, out, quiet=True)
    assert again == scores
    assert (out / "seed0" / "round1" / "rft" / "scores.json").stat().st_mtime_ns == stamp


def test_an_output_directory_refuses_a_different_config(tmp_path: Path) -> None:
    config = _config(tmp_path, seeds=(0,), rounds=1, arms=("base",))
    run_experiment(config, tmp_path / "out", quiet=True)
    with pytest.raises(ProcmemError, match="different config"):
        run_experiment(config.model_copy(update={"n_test": 2}), tmp_path / "out", quiet=True)


def test_cli_runs_the_smoke_config_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    result = CliRunner().invoke(app, ["eval", "--config", str(REPO / "eval/configs/smoke.toml"),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["schema"] == RESULTS_SCHEMA and set(last["arms"]) == set(ARMS)
    results = json.loads((out / "results.json").read_text())
    for arm in ARMS:
        row = results["arms"][arm]
        low, high = row["test_ci95"]
        assert 0.0 <= low <= row["test_accuracy"] <= high <= 1.0
        assert row["seeds"] == 2
    assert len(results["collection"]) == 4  # 2 seeds x 2 rounds
    for png in ("accuracy_by_round.png", "accuracy_by_task.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| pmd |" in report and "accuracy_by_round.png" in report
    assert "Majority-answer baseline" in report and "| *majority answer* |" in report
    assert len(results["traces"]) == 2 * (3 * 2 + 1)  # 2 seeds x (rft, pmd, placebo in 2 rounds + pmd-frozen)
    assert "## Training data per round" in report and "| 0 | 1 | pmd |" in report
    assert set(results["majority_baseline"]) == {*results["config"]["train_suites"],
                                                 *results["config"]["holdout_suites"]}


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_items() -> None:
    few = [[True, False] * 5, [True, True, False, False, True, False, True, False, True, False]]
    many = [row * 10 for row in few]
    low_few, high_few = bootstrap_ci(few, resamples=500)
    low_many, high_many = bootstrap_ci(many, resamples=500)
    assert low_few <= 0.5 <= high_few
    assert high_many - low_many < high_few - low_few
    assert bootstrap_ci([[True] * 4, [True] * 4], resamples=200) == (1.0, 1.0)


def test_placebo_memory_comes_from_a_problem_of_another_suite() -> None:
    asked: list[str] = []

    class Recording:
        def retrieve(self, task: Task, k: int) -> Retrieval:
            asked.append(task.suite)
            return Retrieval((f"entry-for-{task.id}",), f"memory of {task.id}")

    pool = [Task(id=f"{suite}{i}", prompt="q", verifier="exact:1", suite=suite) for suite in "ab" for i in range(3)]
    placebo = PlaceboRetriever(Recording(), pool, seed=0)
    found = placebo.retrieve(pool[0], 2)
    assert asked == ["b"] and found.text.startswith("memory of b")
    assert placebo.retrieve(pool[0], 2) == found  # deterministic per task and seed


def test_holdout_suites_may_not_be_trained_on() -> None:
    with pytest.raises(ValueError, match="never be trained on"):
        EvalConfig(train_suites=("builtin:arith",), holdout_suites=("builtin:arith",))


def test_seeds_can_run_in_separate_processes_and_the_report_covers_what_finished(tmp_path: Path) -> None:
    config = _config(tmp_path, seeds=(0, 1), rounds=1, arms=("base", "rft"))
    path = tmp_path / "eval.toml"
    path.write_text(_toml(config))
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(app, ["eval", "--config", str(path), "--out", str(out), "--seed", "1", "--json"])
    assert first.exit_code == 0, first.output
    partial = json.loads(first.stdout.strip().splitlines()[-1])
    assert partial["arms"]["rft"]["seeds"] == 1
    assert json.loads((out / "results.json").read_text())["meta"]["seeds_finished"] == [1]
    assert "seeds finished [1] of [0, 1]" in (out / "report.md").read_text()
    suite_ci = partial["arms"]["rft"]["per_suite_ci95"]
    assert set(suite_ci) == set(partial["arms"]["rft"]["per_suite"])
    assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in suite_ci.values())
    assert not (out / "seed0" / "round1" / "rft").exists()
    second = runner.invoke(app, ["eval", "--config", str(path), "--out", str(out), "--seed", "0", "--json"])
    assert json.loads(second.stdout.strip().splitlines()[-1])["arms"]["rft"]["seeds"] == 2
    report = runner.invoke(app, ["eval", "--config", str(path), "--out", str(out), "--report-only", "--json"])
    assert report.exit_code == 0 and json.loads(report.stdout.strip().splitlines()[-1])["arms"]["base"]["seeds"] == 2
    wrong = runner.invoke(app, ["eval", "--config", str(path), "--out", str(out), "--seed", "7"])
    assert wrong.exit_code == 2 and "seed" in wrong.stderr


def _toml(config: EvalConfig) -> str:
    """``config`` as TOML (what `procmem eval --config` reads): its top-level fields, its [session] tables, then
    smoke.toml's [distill] tables (which ``_config`` leaves as they are). JSON scalars and arrays are valid TOML
    (None is not: those keys are left to their defaults)."""
    def table(values: dict[str, object]) -> list[str]:
        return [f"{key} = {json.dumps(value)}" for key, value in values.items()
                if value is not None and not isinstance(value, dict)]

    data = config.model_dump(mode="json", exclude={"distill"})
    session = data.pop("session")
    lines = [*table(data), "[session]", *table(session), "[session.generation]", *table(session["generation"])]
    smoke = (REPO / "eval" / "configs" / "smoke.toml").read_text()
    return "\n".join(lines) + "\n\n" + smoke[smoke.index("[distill]"):]


def test_the_majority_answer_baseline_scores_the_most_common_gold_answer(tmp_path: Path) -> None:
    from procmem.eval import majority_baselines

    rows = [{"id": f"m{i}", "prompt": f"Question {i}?", "verifier": f"exact:{gold}", "split": "test"}
            for i, gold in enumerate(["yes", "yes", "no", "Yes."])]
    file = tmp_path / "majority.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = _config(tmp_path, train_suites=(str(file),), n_test=4, n_holdout=0, n_dev=0, seeds=(0,))
    baseline = majority_baselines(config)[str(file)]
    assert baseline == {"answer": "yes", "accuracy": 0.75, "n": 4}  # "Yes." is the same answer to exact:


def test_every_arm_is_one_spec_in_the_table() -> None:
    from typing import get_args

    from procmem.eval import ARM_SPECS, TRAINED_ARMS, Arm

    assert tuple(ARM_SPECS) == ARMS and set(ARMS) == set(get_args(Arm))
    assert all(spec.name == name for name, spec in ARM_SPECS.items())
    assert tuple(a for a in ARMS if ARM_SPECS[a].trains_on != "nothing") == TRAINED_ARMS
    for spec in ARM_SPECS.values():  # an arm that starts late is PMD before: it trains like PMD
        if spec.starts_in_round > 1:
            assert spec.trains_on == ARM_SPECS["pmd"].trains_on


def test_the_pmd_frozen_and_placebo_teachers_read_different_memory(tmp_path: Path) -> None:
    """Same problems, same student prompts; the teacher's memory differs by arm: placebo reads another
    problem's memory (end to end, in the saved traces), pmd-frozen a store frozen after round 1 that
    lacks round 2's episodes."""
    import contextlib

    from procmem.distill.traces import load_trace_build
    from procmem.eval import ARM_SPECS, Experiment
    from procmem.eval.experiment import load_suites
    from procmem.memory._retrieval import ProceduralRetriever

    config = _config(tmp_path, seeds=(0,), rounds=2, arms=("pmd", "pmd-frozen", "placebo"))
    out = tmp_path / "out"
    run_experiment(config, out, quiet=True)
    builds = {}
    for arm in config.arms:
        build = load_trace_build(out / "seed0" / "round2" / arm / "traces")
        assert build is not None and build.contexts, arm
        builds[arm] = {c.task_id: c for c in build.contexts}
    pmd, frozen, placebo = builds["pmd"], builds["pmd-frozen"], builds["placebo"]
    assert pmd.keys() == frozen.keys() == placebo.keys()
    for task_id, context in pmd.items():
        assert context.memory_ids, task_id  # the live teacher reads memory at all
        assert frozen[task_id].prompt == placebo[task_id].prompt == context.prompt  # the student sees the same
        assert placebo[task_id].memory_ids and set(placebo[task_id].memory_ids) != set(context.memory_ids)
        assert placebo[task_id].teacher_prompt != context.teacher_prompt

    # The stores behind the teachers: pmd's live memory holds both rounds' episodes, pmd-frozen's only
    # round 1's. (At this toy size both rounds solve the same three problems, and retrieval shows one worked
    # example per problem, so the two teachers' prompts coincide: the frozen arm separates only when later
    # rounds solve new problems or reflect new insights.)
    experiment = Experiment(config, out, quiet=True)
    memory = experiment._memory(0)
    try:
        with contextlib.ExitStack() as opened:
            stores = {}
            for arm in config.arms:
                retriever = experiment._teacher_retriever(ARM_SPECS[arm], 0, load_suites(config, 0), memory, "p",
                                                          opened)
                inner = getattr(retriever, "_inner", retriever)
                assert isinstance(inner, ProceduralRetriever), arm
                stores[arm] = inner.store.count("experience")
    finally:
        memory.close()
    assert stores["pmd"] == stores["placebo"] > stores["pmd-frozen"] > 0, stores
