"""The promotion gate: is the candidate adapter better than what is promoted, without forgetting?

Both models answer the same held-out items memory-free (``render_prompt(question)``), greedily, with
the same seed and each task's own decoding settings (``generation_for``); answers go through
``extract_answer`` (in the task's answer format) and the task's verifier.

The decision is a paired test on those items (:func:`mcnemar`): only the items where the two models
disagree carry evidence. With ``wins`` items only the candidate passes and ``losses`` items only the
baseline passes, under "no difference" ``wins ~ Binomial(wins + losses, 1/2)``.

- The candidate *improves* when its pooled test accuracy rises by at least ``min_improvement`` and
  McNemar's exact one-sided p-value ``P(X >= wins)`` is at most ``level``.
- It *does not forget* when its pooled holdout accuracy falls by at most ``max_holdout_drop`` and the
  drop is not significant: ``P(X >= losses) > level`` on the holdout items.

``level = 1.0`` turns both tests off (the point estimates alone decide).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from procmem.agent.scoring import score_tasks
from procmem.core import GenerationConfig, Task
from procmem.core.prompts import ANSWER_STOP
from procmem.distill.config import GateConfig
from procmem.llm import LLM

__all__ = ["GateReport", "PairedTest", "SuiteResult", "SuiteScores", "compare", "evaluate", "gate_table", "mcnemar"]


class SuiteScores(BaseModel):
    """Per-item pass/fail of one model on one suite, in item order."""

    model_config = ConfigDict(frozen=True)

    suite: str
    task_ids: tuple[str, ...]
    passed: tuple[bool, ...]

    @property
    def accuracy(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


class SuiteResult(BaseModel):
    """One row of the gate table."""

    model_config = ConfigDict(frozen=True)

    suite: str = Field(description="Suite spec.")
    kind: Literal["test", "holdout"] = Field(description="Held-out test split, or general-ability holdout.")
    n: int = Field(description="Items evaluated.")
    baseline: float = Field(description="Baseline accuracy.")
    candidate: float = Field(description="Candidate accuracy.")

    @property
    def delta(self) -> float:
        return self.candidate - self.baseline


class PairedTest(BaseModel):
    """McNemar's exact one-sided test of "the candidate is better" on paired pass/fail items."""

    model_config = ConfigDict(frozen=True)

    test: Literal["mcnemar-exact-one-sided"] = Field(default="mcnemar-exact-one-sided", description="The test.")
    n: int = Field(description="Paired items (both models answered each).")
    wins: int = Field(description="Items only the candidate passes (the statistic).")
    losses: int = Field(description="Items only the baseline passes.")
    p_better: float = Field(description="P(X >= wins), X ~ Binomial(wins + losses, 1/2): p-value of a gain.")
    p_worse: float = Field(description="P(X >= losses), same X: p-value of a drop.")


def mcnemar(baseline: Sequence[bool], candidate: Sequence[bool]) -> PairedTest:
    """McNemar's exact test on paired verdicts, both one-sided p-values."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired test needs equal lengths, got {len(baseline)} and {len(candidate)}")
    wins = sum(1 for b, c in zip(baseline, candidate, strict=True) if c and not b)
    losses = sum(1 for b, c in zip(baseline, candidate, strict=True) if b and not c)
    return PairedTest(n=len(baseline), wins=wins, losses=losses, p_better=_binomial_tail(wins, wins + losses),
                      p_worse=_binomial_tail(losses, wins + losses))


def _binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    return min(1.0, sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n)


class GateReport(BaseModel):
    """The gate's comparison and decision (recorded in the adapter manifest)."""

    model_config = ConfigDict(frozen=True)

    baseline: str = Field(description="What the candidate was compared with: a version, or 'base'.")
    rows: tuple[SuiteResult, ...] = Field(description="Per-suite accuracies.")
    test_baseline: float = Field(description="Baseline accuracy pooled over the test items.")
    test_candidate: float = Field(description="Candidate accuracy pooled over the test items.")
    holdout_baseline: float | None = Field(description="Baseline accuracy pooled over the holdout (None: none).")
    holdout_candidate: float | None = Field(description="Candidate accuracy pooled over the holdout.")
    min_improvement: float = Field(description="Required test accuracy gain.")
    max_holdout_drop: float = Field(description="Largest allowed holdout accuracy loss.")
    improved: bool = Field(description="Test accuracy rose by at least min_improvement.")
    holdout_ok: bool = Field(description="Holdout accuracy fell by no more than max_holdout_drop.")
    passed: bool = Field(description="improved and holdout_ok.")
    excluded: int = Field(default=0, description="Held-out items skipped because their question was trained on.")
    level: float = Field(default=1.0, description="Significance level of the paired tests (1.0: none; reports "
                                                  "written before the tests existed).")
    test_stats: PairedTest | None = Field(default=None, description="Paired test on the pooled test items.")
    holdout_stats: PairedTest | None = Field(default=None, description="Paired test on the pooled holdout items.")


def evaluate(llm: LLM, suites: Mapping[str, Sequence[Task]], config: GateConfig,
             on_progress: Callable[[int], None] | None = None) -> dict[str, SuiteScores]:
    """Answer every task memory-free and greedily; verify each answer."""
    generation = GenerationConfig(max_tokens=config.max_tokens, temperature=0.0, top_p=1.0, stop=(ANSWER_STOP,),
                                  seed=config.seed)
    scored = score_tasks(llm, suites, generation, on_progress=on_progress)
    return {suite: SuiteScores(suite=suite, task_ids=tuple(i.task_id for i in items),
                               passed=tuple(i.passed for i in items)) for suite, items in scored.items()}


def compare(baseline: Mapping[str, SuiteScores], candidate: Mapping[str, SuiteScores], *,
            test_suites: Sequence[str], holdout_suites: Sequence[str], config: GateConfig,
            baseline_name: str) -> GateReport:
    """The gate decision from per-item scores of both models on the same items."""
    rows: list[SuiteResult] = []
    for kind, names in (("test", test_suites), ("holdout", holdout_suites)):
        for suite in names:
            base, cand = baseline[suite], candidate[suite]
            if base.task_ids != cand.task_ids:
                raise ValueError(f"gate compared different items on {suite}")
            rows.append(SuiteResult(suite=suite, kind=kind, n=len(base.passed),  # type: ignore[arg-type]
                                    baseline=base.accuracy, candidate=cand.accuracy))
    test_stats = _paired(baseline, candidate, test_suites)
    hold_stats = _paired(baseline, candidate, holdout_suites)
    test_base, test_cand = _pooled(baseline, test_suites), _pooled(candidate, test_suites)
    hold_base, hold_cand = _pooled(baseline, holdout_suites), _pooled(candidate, holdout_suites)
    # A small epsilon keeps e.g. "exactly one more item of 100 at min_improvement=0.01" a pass.
    improved = test_base is not None and test_cand is not None and test_stats is not None \
        and test_cand - test_base >= config.min_improvement - 1e-9 and test_stats.p_better <= config.level
    holdout_ok = hold_base is None or hold_cand is None or hold_stats is None or (
        hold_base - hold_cand <= config.max_holdout_drop + 1e-9
        and (config.level >= 1.0 or hold_stats.p_worse > config.level))
    return GateReport(
        baseline=baseline_name, rows=tuple(rows), test_baseline=test_base or 0.0, test_candidate=test_cand or 0.0,
        holdout_baseline=hold_base, holdout_candidate=hold_cand, min_improvement=config.min_improvement,
        max_holdout_drop=config.max_holdout_drop, improved=improved, holdout_ok=holdout_ok,
        passed=improved and holdout_ok, level=config.level, test_stats=test_stats, holdout_stats=hold_stats,
    )


def _pooled(scores: Mapping[str, SuiteScores], suites: Sequence[str]) -> float | None:
    items = [p for suite in suites for p in scores[suite].passed]
    return sum(items) / len(items) if items else None


def _paired(baseline: Mapping[str, SuiteScores], candidate: Mapping[str, SuiteScores],
            suites: Sequence[str]) -> PairedTest | None:
    if not suites:
        return None
    return mcnemar([p for suite in suites for p in baseline[suite].passed],
                   [p for suite in suites for p in candidate[suite].passed])


def gate_table(report: GateReport, candidate_name: str = "candidate") -> Table:
    """The comparison as a rich table."""
    verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
    table = Table(title=f"promotion gate: {candidate_name} vs {report.baseline}: {verdict}")
    for column, justify in (("suite", "left"), ("kind", "left"), ("n", "right"), (report.baseline, "right"),
                            (candidate_name, "right"), ("delta", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        table.add_row(row.suite, row.kind, str(row.n), f"{row.baseline:.1%}", f"{row.candidate:.1%}",
                      f"{row.delta:+.1%}")
    table.add_row("all test", "test", str(report.test_stats.n) if report.test_stats else "",
                  f"{report.test_baseline:.1%}", f"{report.test_candidate:.1%}",
                  f"{report.test_candidate - report.test_baseline:+.1%} (need >= {report.min_improvement:+.1%})"
                  + _significance(report.test_stats, "better", report.level), end_section=True)
    if report.excluded:
        table.caption = f"{report.excluded} held-out items skipped: their question was trained on"
    if report.holdout_baseline is not None and report.holdout_candidate is not None:
        drop = report.holdout_candidate - report.holdout_baseline
        table.add_row("all holdout", "holdout", str(report.holdout_stats.n) if report.holdout_stats else "",
                      f"{report.holdout_baseline:.1%}", f"{report.holdout_candidate:.1%}",
                      f"{drop:+.1%} (allow >= {-report.max_holdout_drop:+.1%})"
                      + _significance(report.holdout_stats, "worse", report.level))
    return table


def _significance(stats: PairedTest | None, side: Literal["better", "worse"], level: float) -> str:
    """The paired test in words, for the table: discordant items and the one-sided p-value."""
    if stats is None or level >= 1.0:
        return ""
    p = stats.p_better if side == "better" else stats.p_worse
    need = "need p <= " if side == "better" else "refuse at p <= "
    return f"; McNemar {stats.wins} won/{stats.losses} lost, p_{side}={p:.3f} ({need}{level:g})"
