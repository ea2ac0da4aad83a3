"""The evidence experiment, end to end on the tiny model: every arm, stage and output file, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import jsonl_suite
from typer.testing import CliRunner

from procmem.cli import app
from procmem.core import ProcmemError, load_config
from procmem.eval import (
    ARMS,
    PAPER_ARMS,
    RESULTS_SCHEMA,
    EvalConfig,
    bootstrap_ci,
    budget_rows,
    match_budget,
    run_experiment,
    trace_counts,
)
from procmem.memory import open_memory
from procmem.memory.config import MemoryConfig, TeacherConfig

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
    config = _config(tmp_path, seeds=(0,), rounds=2, arms=ARMS, train_examples=4)
    out = tmp_path / "out"
    scores = run_experiment(config, out, quiet=True)

    # every arm has its own rows; the frozen ablations start in round 2 (in round 1 they ARE pmd, never scored twice)
    late = {("pmd-frozen-memory", 1), ("pmd-frozen-policy", 1)}
    assert {(s.arm, s.round) for s in scores} == {(arm, r) for arm in ARMS for r in (1, 2)} - late
    assert not (out / "seed0" / "round1" / "pmd-frozen-memory").exists()
    for s in scores:
        assert [len(v) for v in s.test.values()] == [3, 3]
        assert s.test[config.train_suites[0]] == [True] * 3  # any answer passes
        assert s.test[config.train_suites[1]] == [False] * 3
    # matched budgets: every trained arm trains on exactly train_examples examples each round
    trained = [s for s in scores if s.arm not in ("base", "base+memory")]
    assert {(s.train_examples, s.train_steps) for s in trained} == {(4, 2)}
    # memory tracks: round 1's memory (reflected, and as collected), then one track per arm that writes its own
    seed = out / "seed0"
    for track in ("memory-r1", "memory-r1-unreflected", "memory-pmd", "memory-pmd-no-reflection", "memory-base"):
        assert (seed / track).is_dir(), track
    assert not (seed / "memory-pmd-frozen-memory").exists()  # it reads memory-r1 and never writes it
    experiences = {}
    for track in ("memory-r1", "memory-pmd", "memory-base", "memory-pmd-no-reflection"):
        opened = open_memory(seed / track)
        try:
            experiences[track] = opened.stats()["experience"]
        finally:
            opened.close()
    assert experiences["memory-r1"] == 6  # round 1's six problems, never written again
    assert experiences["memory-pmd"] == experiences["memory-base"] == experiences["memory-pmd-no-reflection"] == 12
    reflection = json.loads((seed / "round1" / "collect-memory" / "reflect.json").read_text())
    assert reflection["calls"] <= config.reflect_max_calls and reflection["stats"]["experience"] >= 6
    assert (seed / "round2" / "pmd" / "reflect.json").exists()
    assert not (seed / "round2" / "pmd-no-reflection" / "reflect.json").exists()
    by_arm = {s.arm: s for s in scores if s.round == 1}
    assert by_arm["base+memory"].holdout == {}
    # on-policy: from round 2 each trained arm collects its own episodes, the episode-local ones without memory
    budgets = {(row["arm"], row["round"]): row for row in budget_rows(config, out)}
    for arm in ("rft", "sdpo"):
        assert not budgets[(arm, 1)]["with_memory"] and not budgets[(arm, 2)]["with_memory"]
        assert json.loads((seed / "round2" / arm / "collect.json").read_text())["policy"].endswith(
            f"round1/{arm}/train/adapter")
    for arm in ("pmd", "pmd-frozen-memory", "pmd-frozen-policy", "pmd-no-reflection"):
        assert budgets[(arm, 2)]["with_memory"], arm
    assert budgets[("rft", 2)]["objective"] == "sft" and budgets[("sdpo", 2)]["objective"] == "self-distill"
    assert budgets[("pmd", 2)]["objective"] == config.pmd_recipe
    assert budgets[("pmd-mixed", 2)]["objective"] == "mixed" and budgets[("pmd-sft", 2)]["objective"] == "sft"
    assert budgets[("sdpo", 2)]["rollouts"] == 4 and budgets[("rft", 2)]["rollouts"] == 0
    traces = {(row["arm"], row["round"]): row for row in trace_counts(config, out)}
    easy = config.train_suites[0]
    assert traces[("rft", 1)] == {"seed": 0, "round": 1, "arm": "rft", "problems": 0, "candidates": 0,
                                  "verified_problems": 3, "verified_by_suite": {easy: 3}}
    teacher = traces[("pmd-sft", 1)]  # own successes on "easy", the teacher's candidates for the unsolved "hard"
    assert teacher["problems"] == 6 and teacher["candidates"] == 3 + 3 * config.distill.traces.k
    assert teacher["verified_by_suite"] == {easy: 3}

    stamp = (seed / "round1" / "rft" / "scores.json").stat().st_mtime_ns
    again = run_experiment(config, out, quiet=True)
    assert again == scores
    assert (seed / "round1" / "rft" / "scores.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("all_advice", [False, True], ids=["validated-advice", "all-advice"])
def test_the_episode_local_arms_read_no_memory_and_each_teacher_sees_its_own_context(tmp_path: Path,
                                                                                     all_advice: bool) -> None:
    """rft and sdpo: no retrieved entry in the prompts they collect with, their teacher contexts or their training
    examples. The sdpo teacher reads the episode's own failed attempt and feedback; the pmd teacher reads memory:
    worked examples and the advice the verifier validated, or with ``[memory.teacher]`` off, all advice."""
    from procmem.core import Episode
    from procmem.core.fileio import read_jsonl
    from procmem.distill.traces import load_trace_build

    config = _config(tmp_path, seeds=(0,), rounds=2, arms=("rft", "sdpo", "pmd"), train_examples=4)
    if all_advice:
        config = config.model_copy(update={"memory": MemoryConfig(teacher=TeacherConfig(validated_advice_only=False))})
    out = tmp_path / "out"
    run_experiment(config, out, quiet=True)
    seed = out / "seed0"
    memory = open_memory(seed / "memory-pmd")
    try:
        stored = [e for level in ("insight", "pattern") for e in memory.entries(level)]
        entries = {e.id: e.text for e in stored}
        assert entries  # the pmd arm's memory holds reflected advice the episode-local arms must never read
    finally:
        memory.close()

    def episodes(stage: Path) -> list[Episode]:
        return [Episode.from_dict(row) for row in read_jsonl(stage / "episodes.jsonl")]

    for arm in ("rft", "sdpo"):
        for stage in (seed / "round1" / "collect-none", seed / "round2" / arm):
            collected = episodes(stage)
            assert collected and all(e.memory_ids == () for e in collected), stage
        for round_ in (1, 2):
            build = load_trace_build(seed / f"round{round_}" / arm / "traces")
            assert build is not None
            units = [*build.kept, *build.contexts]
            assert units, (arm, round_)
            for unit in units:
                assert unit.memory_ids == ()
                assert not any(text in unit.teacher_prompt or text in unit.prompt for text in entries.values())
                assert "Advice from past problems" not in unit.teacher_prompt

    sdpo = load_trace_build(seed / "round2" / "sdpo" / "traces")
    own = {e.id: e for e in episodes(seed / "round2" / "sdpo")}
    assert sdpo is not None
    failed = [c for c in sdpo.contexts if not own[c.episode_ids[0]].passed]
    assert failed
    for context in failed:
        episode = own[context.episode_ids[0]]
        attempt = episode.attempts[-1]
        assert f"Previous answer: {attempt.answer}" in context.teacher_prompt
        assert f"Feedback: {attempt.verdict.feedback}" in context.teacher_prompt
        others = [e for e in own.values() if e.task.id != episode.task.id]
        assert not any(f"Question: {e.task.prompt}" in context.teacher_prompt for e in others)

    pmd = load_trace_build(seed / "round2" / "pmd" / "traces")
    assert pmd is not None and pmd.contexts
    for context in pmd.contexts:
        question = context.prompt.splitlines()[0]
        assert context.memory_ids and context.teacher_prompt.index(question) > 0  # retrieved memory, then the question
    # ... worked examples, and of the advice only what the verifier validated in use (memory.teacher_retriever)
    unproven = [e for e in stored if e.uses < TeacherConfig().min_uses and e.source != "operator"]
    assert unproven, "the run reflected advice that no episode has tried often enough yet"
    read = [c for c in pmd.contexts if {e.id for e in unproven} & set(c.memory_ids)]
    assert bool(read) == all_advice
    assert any("Advice from past problems" in c.teacher_prompt for c in pmd.contexts) == all_advice


def test_match_budget_draws_the_units_each_objective_trains_on() -> None:
    from procmem.distill.traces import TeacherContext, Trace, TraceBuild

    def trace(i: int) -> Trace:
        return Trace(task_id=f"t{i}", prompt="p", teacher_prompt="p", completion=" x\n", answer="x", sample=0,
                     score=1.0, status="kept")

    build = TraceBuild(tuple(trace(i) for i in range(3)), (),
                       tuple(TeacherContext(task_id=f"c{i}", prompt="p", teacher_prompt="t") for i in range(5)))
    sft = match_budget(build, 7, seed=1, objective="sft")
    assert len(sft.kept) == 7 and sft.contexts == build.contexts
    assert [t.task_id for t in sft.kept[:6]] == ["t0", "t1", "t2"] * 2  # every trace in turn, then a sample
    distill = match_budget(build, 4, seed=1, objective="self-distill")
    assert len(distill.contexts) == 4 and len({c.task_id for c in distill.contexts}) == 4
    assert distill.kept == build.kept
    mixed = match_budget(build, 8, seed=1, objective="mixed")
    assert (len(mixed.kept), len(mixed.contexts)) == (4, 4)
    assert match_budget(build, 0, seed=1, objective="sft") == build


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
    assert last["schema"] == RESULTS_SCHEMA and set(last["arms"]) == set(PAPER_ARMS)
    results = json.loads((out / "results.json").read_text())
    for arm in PAPER_ARMS:
        row = results["arms"][arm]
        low, high = row["test_ci95"]
        assert 0.0 <= low <= row["test_accuracy"] <= high <= 1.0
        assert row["seeds"] == 2
    assert len(results["budgets"]) == 2 * (4 * 2 + 2)  # 2 seeds x (4 arms in 2 rounds + 2 frozen arms in round 2)
    for png in ("accuracy_by_round.png", "accuracy_by_task.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| pmd |" in report and "accuracy_by_round.png" in report
    assert "Majority-answer baseline" in report and "| *majority answer* |" in report
    assert "PMD teachers read worked examples and only the advice the verifier validated in use" in report
    assert len(results["traces"]) == len(results["budgets"])
    assert "## Training budgets per round" in report and "| 0 | 1 | pmd | yes |" in report
    assert "| 0 | 2 | rft | no |" in report and "| 0 | 2 | sdpo | no |" in report
    assert "## Format and procedure" in report
    assert {(d["arm"], d["versus"]) for d in results["differences"]} >= {
        ("pmd", v) for v in ("base", "rft", "sdpo", "pmd-frozen-memory", "pmd-frozen-policy", "pmd-no-reflection")}
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
    assert tuple(a for a in ARMS if ARM_SPECS[a].learns != "nothing") == TRAINED_ARMS
    for spec in ARM_SPECS.values():  # an arm that starts late is PMD before: it learns like PMD
        if spec.starts_in_round > 1:
            assert spec.learns == ARM_SPECS["pmd"].learns and spec.recipe == ARM_SPECS["pmd"].recipe
    assert ARM_SPECS["rft"].memory == ARM_SPECS["sdpo"].memory == "none"  # episode-local
    with pytest.raises(ValueError, match="add 'pmd'"):
        EvalConfig(train_suites=("builtin:arith",), arms=("base", "pmd-frozen-memory"))


def test_a_run_on_the_llamacpp_engine_closes_every_policy_it_loads(tmp_path: Path) -> None:
    """A run loads a policy per collection, reflection, teacher and score (dozens per seed). A llama.cpp engine
    left open keeps its model, context and thread (~0.8 GB for the bundled model): a seed of paper.toml grew to
    16 GB. Every one is closed after its stage; the run honours ``session.engine``."""
    import threading

    pytest.importorskip("llama_cpp")
    smoke = _config(tmp_path)
    config = _config(tmp_path, seeds=(0,), rounds=1, arms=("base", "base+memory", "rft", "pmd"), train_examples=4,
                     session=smoke.session.model_copy(update={"engine": "llamacpp"}))
    before = sum(t.name == "procmem-llamacpp" for t in threading.enumerate())
    scores = run_experiment(config, tmp_path / "out", quiet=True)
    assert {s.arm for s in scores} == {"base", "base+memory", "rft", "pmd"}
    assert list((tmp_path / "out" / "models").rglob("*.gguf"))  # the engine's model: the run used llama.cpp
    assert sum(t.name == "procmem-llamacpp" for t in threading.enumerate()) == before
