"""The promotion gate: the decision rule, and memory-free evaluation of the real tiny model."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from procmem.core import Attempt, Episode, GenerationConfig, Task, Verdict
from procmem.core.registry import GateReport, gate_table
from procmem.distill import GateConfig
from procmem.distill.gate import SuiteScores, compare, evaluate, mcnemar
from procmem.llm import Generation, LocalLLM


def _scores(suite: str, passed: Sequence[bool]) -> SuiteScores:
    return SuiteScores(suite=suite, task_ids=tuple(f"{suite}-{i}" for i in range(len(passed))), passed=tuple(passed))


def _decide(test: tuple[int, int], holdout: tuple[int, int] | None = None, n: int = 10, **config: float) -> GateReport:
    """Gate ``baseline`` vs ``candidate`` passing ``test`` = (baseline, candidate) of ``n`` items."""
    base = {"t": _scores("t", [i < test[0] for i in range(n)])}
    cand = {"t": _scores("t", [i < test[1] for i in range(n)])}
    holdouts = []
    if holdout is not None:
        base["h"] = _scores("h", [i < holdout[0] for i in range(n)])
        cand["h"] = _scores("h", [i < holdout[1] for i in range(n)])
        holdouts = ["h"]
    config = {"level": 1.0, **config}  # the point-estimate rule alone unless a test sets a level
    return compare(base, cand, test_suites=["t"], holdout_suites=holdouts, config=GateConfig.model_validate(config),
                   baseline_name="v1")


def test_gate_passes_a_better_adapter() -> None:
    report = _decide((3, 6), (5, 5), min_improvement=0.1, max_holdout_drop=0.0)
    assert report.passed and report.improved and report.holdout_ok
    assert (report.test_baseline, report.test_candidate) == (0.3, 0.6)
    assert report.baseline == "v1" and [r.kind for r in report.rows] == ["test", "holdout"]


def test_gate_refuses_a_worse_adapter() -> None:
    report = _decide((6, 3), min_improvement=0.0)
    assert not report.passed and not report.improved


def test_gate_refuses_an_improvement_below_the_margin_and_accepts_one_at_it() -> None:
    assert not _decide((3, 4), min_improvement=0.2).passed
    assert _decide((3, 5), min_improvement=0.2).passed  # exactly the margin (0.5 - 0.3 is not exactly 0.2 in floats)
    assert not _decide((3, 3), min_improvement=0.01).passed


def test_gate_refuses_a_holdout_drop_beyond_the_tolerance() -> None:
    report = _decide((3, 9), (8, 6), min_improvement=0.1, max_holdout_drop=0.1)
    assert report.improved and not report.holdout_ok and not report.passed
    assert _decide((3, 9), (8, 7), min_improvement=0.1, max_holdout_drop=0.1).passed


def test_gate_pools_test_suites_and_refuses_mismatched_items() -> None:
    base = {"a": _scores("a", [True, False]), "b": _scores("b", [False, False, False, False])}
    cand = {"a": _scores("a", [True, True]), "b": _scores("b", [False, False, False, False])}
    report = compare(base, cand, test_suites=["a", "b"], holdout_suites=[],
                     config=GateConfig(min_improvement=0.1, level=1.0), baseline_name="base")
    assert report.test_baseline == pytest.approx(1 / 6) and report.test_candidate == pytest.approx(2 / 6)
    assert report.passed and report.holdout_baseline is None
    other = {"a": SuiteScores(suite="a", task_ids=("x", "y"), passed=(True, True)), "b": cand["b"]}
    with pytest.raises(ValueError, match="different items"):
        compare(base, other, test_suites=["a", "b"], holdout_suites=[], config=GateConfig(), baseline_name="base")


def test_gate_table_shows_every_suite_and_the_verdict() -> None:
    console = Console(record=True, width=200)
    console.print(gate_table(_decide((3, 6), (5, 4), min_improvement=0.1, max_holdout_drop=0.2), "v2"))
    text = console.export_text()
    assert "PASS" in text and "v2" in text and "v1" in text and "+30.0%" in text and "all holdout" in text


def test_mcnemar_counts_discordant_items_and_gives_exact_one_sided_p_values() -> None:
    stats = mcnemar([False, False, False, True, True, False], [True, True, False, True, False, True])
    assert (stats.n, stats.wins, stats.losses) == (6, 3, 1)
    assert stats.p_better == pytest.approx(5 / 16)  # P(X >= 3), X ~ Bin(4, 1/2) = (4 + 1) / 16
    assert stats.p_worse == pytest.approx(15 / 16)
    assert mcnemar([True], [True]).p_better == 1.0  # no disagreement: no evidence either way
    assert mcnemar([False] * 5, [True] * 5).p_better == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar([True], [True, False])


def test_gate_refuses_a_gain_that_is_not_significant_at_the_level() -> None:
    # 4 more items of 40 right (+10 points), all of them wins: p = 1/16 > 0.05.
    report = _decide((10, 14), n=40, level=0.05)
    assert not report.passed and not report.improved
    assert report.test_stats is not None and (report.test_stats.wins, report.test_stats.losses) == (4, 0)
    assert report.test_stats.p_better == pytest.approx(1 / 16) and report.level == 0.05
    # 5 wins and no losses: p = 1/32 <= 0.05.
    assert _decide((10, 15), n=40, level=0.05).passed
    # The same +5 net with churn (the candidate also loses items) is weaker evidence.
    base = {"t": _scores("t", [i < 10 for i in range(40)])}
    cand = {"t": _scores("t", [5 <= i < 20 for i in range(40)])}  # loses 0-4, wins 10-19: 10 won / 5 lost
    churn = compare(base, cand, test_suites=["t"], holdout_suites=[], config=GateConfig(level=0.05),
                    baseline_name="v1")
    assert churn.test_stats is not None and (churn.test_stats.wins, churn.test_stats.losses) == (10, 5)
    assert churn.test_stats.p_better > 0.05 and not churn.passed


def test_gate_refuses_a_significant_holdout_drop_within_the_tolerance() -> None:
    # The holdout falls by 6 of 200 (3 points, inside max_holdout_drop=0.05) but all 6 are losses: p = 1/64.
    report = _decide((10, 40), (150, 144), n=200, level=0.05, max_holdout_drop=0.05)
    assert report.improved and not report.holdout_ok and not report.passed
    assert report.holdout_stats is not None and report.holdout_stats.p_worse == pytest.approx(1 / 64)
    # Three losses are not significant (p = 1/8): the drop is tolerated.
    assert _decide((10, 40), (150, 147), n=200, level=0.05, max_holdout_drop=0.05).passed


def test_gate_table_shows_the_paired_test() -> None:
    console = Console(record=True, width=250)
    console.print(gate_table(_decide((10, 15), (5, 5), n=40, level=0.05), "v2"))
    text = console.export_text()
    assert "McNemar 5 won/0 lost" in text and "p_better=0.031" in text and "p_worse=1.000" in text


def test_a_and_a_the_gate_promotes_noise_at_most_at_its_level() -> None:
    """Two samples of the SAME policy (per-item pass rates drawn once) promote rarely with the paired test,
    and often without it: the test can fail."""
    rng = random.Random(7)
    rates = [rng.choice([0.0, 0.0, 1.0, 0.2, 0.5, 0.8]) for _ in range(100)]

    def run() -> dict[str, SuiteScores]:
        return {"t": _scores("t", [rng.random() < r for r in rates])}

    def promotions(config: GateConfig, trials: int = 400) -> float:
        return sum(compare(run(), run(), test_suites=["t"], holdout_suites=[], config=config,
                           baseline_name="v1").passed for _ in range(trials)) / trials

    assert promotions(GateConfig()) <= 0.05
    assert promotions(GateConfig(level=1.0)) >= 0.3  # the old rule: one more item right promotes


class _Recorder:
    """The real tiny model, remembering the prompts and generation settings it was given."""

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self.prompts: list[str] = []
        self.configs: list[GenerationConfig] = []

    @property
    def model_id(self) -> str:
        return self.llm.model_id

    @property
    def adapter_version(self) -> str | None:
        return None

    def generate(self, prompts: Sequence[str], config: GenerationConfig) -> list[Generation]:
        self.prompts.extend(prompts)
        self.configs.append(config)
        return self.llm.generate(prompts, config)


def test_evaluate_answers_memory_free_and_greedily_with_the_real_verifier(tiny_model_dir: Path) -> None:
    llm = _Recorder(LocalLLM(tiny_model_dir))
    tasks = {
        "any": [Task(id=f"a{i}", prompt=f"Say {i}.", verifier="regex:(?s).*", split="test") for i in range(3)],
        "none": [Task(id=f"n{i}", prompt=f"Add {i} and 1.", verifier="exact:an answer nobody gives", split="test")
                 for i in range(2)],
    }
    scores = evaluate(llm, tasks, GateConfig(max_tokens=4))
    assert scores["any"].accuracy == 1.0 and scores["none"].accuracy == 0.0
    assert scores["none"].task_ids == ("n0", "n1")
    assert llm.prompts[0] == "Question: Say 0.\nAnswer:"  # exactly render_prompt(question): no memory
    assert all(c.temperature == 0.0 and c.max_tokens == 4 for c in llm.configs)


def test_evaluate_decodes_each_task_with_its_own_settings(tiny_model_dir: Path) -> None:
    llm = _Recorder(LocalLLM(tiny_model_dir))
    code = Task(id="c", prompt="Write a program.", verifier="regex:(?s).*", split="test",
                metadata={"answer_format": "code", "generation": {"stop": ["\n\n\n"], "max_tokens": 6}})
    line = Task(id="l", prompt="Say hi.", verifier="regex:(?s).*", split="test")
    scores = evaluate(llm, {"mixed": [code, line]}, GateConfig(max_tokens=3))
    assert scores["mixed"].passed == (True, True)
    assert sorted((c.max_tokens, c.stop) for c in llm.configs) == [(3, ("\n",)), (6, ("\n\n\n",))]
    assert all(c.temperature == 0.0 for c in llm.configs)


# ------------------------------------------------------------------------ held-out production episodes


def _calls(n: int, verifier: str = "exact:yes", start: int = 0) -> list[Episode]:
    return [Episode(task=Task(id=f"c{i}", prompt=f"Question number {i}?", verifier=verifier, suite="serve"),
                    attempts=(Attempt("yes", Verdict(passed=verifier == "exact:yes", score=1.0)),), model_id="m",
                    id=f"e{i}", finished_at=f"2026-01-01T00:00:{i % 60:02d}") for i in range(start, start + n)]


def test_held_out_questions_are_a_stable_share_decided_by_the_question_text() -> None:
    from procmem.distill.gate import held_out

    questions = [f"Question number {i}?" for i in range(2000)]
    picked = [q for q in questions if held_out(q, 0.2)]
    assert 0.17 < len(picked) / len(questions) < 0.23
    assert picked == [q for q in questions if held_out(q, 0.2)]  # the same on every call (and run)
    assert all(held_out(q.upper().replace(" ", "  "), 0.2) for q in picked)  # case and spacing aside
    assert not any(held_out(q, 0.0) for q in questions)
    assert set(picked) <= {q for q in questions if held_out(q, 0.5)}  # a larger share only adds questions


def test_split_held_out_keeps_every_episode_of_a_held_out_question_out_of_training() -> None:
    from procmem.distill.gate import held_out, split_held_out

    config = GateConfig(heldout_share=0.3, n_test=1000)
    episodes = [*_calls(60), *_calls(60, verifier="regex:(?!)", start=60)]
    repeat = next(e for e in episodes[:60] if held_out(e.task.prompt, 0.3))
    asked_again = Episode(task=Task(id="again", prompt=repeat.task.prompt.upper(), verifier="exact:no", suite="other"),
                          attempts=repeat.attempts, model_id="m", id="again")
    train, items = split_held_out([*episodes, asked_again], ["serve"], config)
    held = [e for e in episodes[:60] if held_out(e.task.prompt, 0.3)]
    assert [t.id for t in items["serve"]] == [e.task.id for e in held]
    # judged wrong without a correction: never held out, always trained on
    assert {e.id for e in episodes[60:]} <= {e.id for e in train}
    assert not {e.id for e in held} & {e.id for e in train} and asked_again not in train
    assert len(train) == len(episodes) - len(held)
    # stable: other episodes around them do not change which are held out; the cap keeps the newest
    again, _ = split_held_out(list(reversed(episodes)), ["serve"], config)
    assert {e.id for e in again} == {e.id for e in train}
    _, capped = split_held_out(episodes, ["serve"], config.model_copy(update={"n_test": 2}))
    assert [t.id for t in capped["serve"]] == [t.id for t in items["serve"]][-2:]
    assert split_held_out(episodes, ["absent"], config)[1] == {"absent": []}
