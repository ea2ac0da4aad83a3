"""The experiment's design rules: disjoint splits with per-seed test draws, calibration on dev only, matched
budgets, every arm scored per seed (no copies), the paired bootstrap, and resume after an interruption."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import jsonl_suite

from procmem.core import load_config
from procmem.distill.traces import Trace, TraceBuild
from procmem.eval import (
    PAPER_ARMS,
    EvalConfig,
    bootstrap_ci,
    finished_scores,
    load_splits,
    load_suites,
    match_budget,
    paired_bootstrap,
    run_experiment,
)

REPO = Path(__file__).resolve().parents[2]
SUM = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=2&max_digits=2"


def _suite(path: Path, name: str, passable: bool) -> str:
    return jsonl_suite(path, name, passable, n_train=8, n_test=12)


def _config(tmp_path: Path, **overrides: object) -> EvalConfig:
    smoke = load_config(EvalConfig, REPO / "eval" / "configs" / "smoke.toml")
    update = {"train_suites": (_suite(tmp_path, "easy", True), _suite(tmp_path, "hard", False)),
              "holdout_suites": (), "n_train": 3, "n_test": 3, "n_holdout": 0, "n_dev": 2, **overrides}
    return smoke.model_copy(update=update)


def test_train_dev_and_each_seeds_test_items_are_disjoint_and_seeds_draw_different_items() -> None:
    config = EvalConfig(train_suites=(SUM,), seeds=(0, 1, 2), n_train=20, n_test=15, n_dev=10)
    splits = load_splits(config)
    dev = {t.id for t in splits.dev[SUM]}
    train = {t.id for t in splits.train_pool[SUM]}
    tests = [{t.id for t in splits.test[seed][SUM]} for seed in config.seeds]
    assert len(dev) == 10 and all(len(t) == 15 for t in tests) and len(train) == 40
    assert not dev & train and not any(t & (dev | train) for t in tests)
    assert not tests[0] & tests[1] and not tests[1] & tests[2] and not tests[0] & tests[2]
    first, second = (load_suites(config, seed, splits) for seed in (0, 1))
    assert {t.id for t in first.train[SUM]} != {t.id for t in second.train[SUM]}  # train drawn per seed too
    assert len(first.train[SUM]) == 20 and {t.id for t in first.train[SUM]} <= train


def test_calibration_loads_dev_items_only_and_they_are_the_dev_items_of_the_experiment() -> None:
    config = EvalConfig(train_suites=(SUM,), seeds=(0, 1), n_train=5, n_test=15, n_dev=10)
    dev_only = load_splits(config, dev_only=True)
    assert all(not by_suite.get(SUM) for by_suite in dev_only.test.values())  # no test item is even loaded
    assert [t.id for t in dev_only.dev[SUM]] == [t.id for t in load_splits(config).dev[SUM]]
    calibrate = (REPO / "eval" / "bench" / "calibrate.py").read_text()
    assert "dev_only=True" in calibrate and 'split="test"' not in calibrate and ".test[" not in calibrate


def test_reasoned_items_carry_the_marked_answer_format_and_the_token_budget() -> None:
    config = EvalConfig(train_suites=(SUM,), seeds=(0,), n_train=2, n_test=2, n_dev=1, answer_format="reasoned",
                        max_tokens=96)
    task = load_splits(config).test[0][SUM][0]
    assert task.answer_format == "reasoned"
    assert task.metadata["generation"]["max_tokens"] == 96


def _trace(i: int) -> Trace:
    return Trace(task_id=f"t{i}", suite="s", prompt="Question: q\nAnswer:", teacher_prompt="", memory_ids=(),
                 episode_ids=(), completion=f" {i}\n", answer=str(i), sample=0, score=1.0, status="kept",
                 feedback="", teacher="p")


def test_match_budget_subsamples_or_repeats_to_exactly_n_examples() -> None:
    few = TraceBuild(kept=tuple(_trace(i) for i in range(3)), rejected=(), contexts=())
    many = TraceBuild(kept=tuple(_trace(i) for i in range(50)), rejected=(), contexts=())
    repeated = match_budget(few, 8, seed=0).kept
    assert len(repeated) == 8 and {t.answer for t in repeated} == {"0", "1", "2"}
    assert all(sum(t.answer == a for t in repeated) in (2, 3) for a in "012")  # repeated in turn, evenly
    sampled = match_budget(many, 8, seed=0).kept
    assert len(sampled) == 8 and len({t.answer for t in sampled}) == 8
    assert match_budget(many, 8, seed=0) == match_budget(many, 8, seed=0)
    assert match_budget(many, 0, seed=0) == many


def test_matched_budgets_count_the_units_each_recipe_trains_on(tmp_path: Path) -> None:
    """Budgets match for every recipe (SFT traces, self-distillation rollouts, half each for mixed), so a PMD
    recipe with problems as examples is no longer refused."""
    for recipe in ("sft", "mixed", "self-distill"):
        config = EvalConfig.model_validate({**_config(tmp_path).model_dump(), "train_examples": 6,
                                            "pmd_recipe": recipe})
        assert config.train_examples == 6 and config.pmd_recipe == recipe


def test_the_paired_bootstrap_uses_the_pairing() -> None:
    base = [[i % 2 == 0 for i in range(100)] for _ in range(3)]
    better = [[v or i < 6 for i, v in enumerate(row)] for row in base]  # 3 more right items per seed, no fewer
    low, high = paired_bootstrap(better, base, resamples=1000)
    assert 0.0 <= low < 0.03 < high < 0.08  # never below 0: no item got worse
    unpaired_low, _ = bootstrap_ci(better, resamples=1000)
    assert unpaired_low < 0.5  # the arm's own CI is far wider than the paired difference's
    assert paired_bootstrap(base, base, resamples=200) == (0.0, 0.0)
    assert paired_bootstrap([[True] * 4, [False] * 4], None, resamples=400)[0] < 0.5 < \
        paired_bootstrap([[True] * 4, [False] * 4], None, resamples=400)[1]  # seeds are resampled too


def test_every_arm_and_seed_is_scored_on_its_own_with_matched_budgets_and_resumes_after_a_kill(
        tmp_path: Path) -> None:
    config = _config(tmp_path, seeds=(0, 1), rounds=2, train_examples=6)
    out = tmp_path / "out"
    scores = run_experiment(config, out, quiet=True)
    final = {(s.arm, s.seed): s for s in scores}
    assert set(final) == {(arm, seed) for arm in PAPER_ARMS for seed in (0, 1)}  # final round only, every arm, seed
    assert all(s.round == 2 for s in scores)
    for seed in (0, 1):
        for arm in PAPER_ARMS:
            assert (out / f"seed{seed}" / "round2" / arm / "scores.json").exists()  # its own file, not a copy
        assert final[("base", seed)].item_ids == final[("pmd", seed)].item_ids
    assert final[("base", 0)].item_ids != final[("base", 1)].item_ids  # each seed its own test items
    rft, sdpo, pmd = final[("rft", 0)], final[("sdpo", 0)], final[("pmd", 0)]
    assert rft.train_examples == sdpo.train_examples == pmd.train_examples == 6  # traces or rollouts alike
    assert rft.train_steps == sdpo.train_steps == pmd.train_steps > 0
    assert (out / "seed0" / "round1" / "uplift.json").exists() is False  # n_uplift 0: not measured

    # a kill during seed 1's final PMD training: its scores and adapter are gone; the rerun redoes only that
    keep = out / "seed1" / "round2" / "rft" / "scores.json"
    stamp = keep.stat().st_mtime_ns
    import shutil

    shutil.rmtree(out / "seed1" / "round2" / "pmd" / "train")
    (out / "seed1" / "round2" / "pmd" / "scores.json").unlink()
    again = run_experiment(config, out, quiet=True)
    assert keep.stat().st_mtime_ns == stamp
    assert {(s.arm, s.seed) for s in again} == set(final)
    assert {(s.arm, s.seed): s.test for s in finished_scores(config, out)}[("pmd", 1)] == final[("pmd", 1)].test
