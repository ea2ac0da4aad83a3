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

The decision's records (:class:`GateReport`, :class:`SuiteResult`, :class:`PairedTest`) and its table live
with the adapter registry (:mod:`procmem.core.registry`), whose manifests store them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from procmem.agent.scoring import score_tasks
from procmem.core import GenerationConfig, Task
from procmem.core.prompts import ANSWER_STOP
from procmem.core.registry import GateReport, PairedTest, SuiteResult, gate_table
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
