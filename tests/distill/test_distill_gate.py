"""The promotion gate: the decision rule, and memory-free evaluation of the real tiny model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from procmem.core import GenerationConfig, Task
from procmem.distill import GateConfig, GateReport, compare, evaluate, gate_table
from procmem.distill.gate import SuiteScores
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
    report = compare(base, cand, test_suites=["a", "b"], holdout_suites=[], config=GateConfig(min_improvement=0.1),
                     baseline_name="base")
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
