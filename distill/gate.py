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

**Held-out production episodes.** A suite without a test split of its own (``serve``: the verified calls of
``procmem serve``) is gated on its own verified episodes that training never saw: :func:`held_out` picks a
share (``heldout_share``) of its questions by a hash of their normalised text, so the same questions are held
out on every run; :func:`split_held_out` takes every episode of those questions out of training and turns each
question into one gate item, the newest re-scorable episode's task with its own verifier. Episodes judged
wrong without a correction (:data:`UNSCORABLE_VERIFIERS`) cannot be re-scored and are never held out.

The decision's records (:class:`GateReport`, :class:`SuiteResult`, :class:`PairedTest`) and its table live
with the adapter registry (:mod:`procmem.core.registry`), whose manifests store them.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from procmem.agent.scoring import score_tasks
from procmem.core import Episode, GenerationConfig, ProcmemError, Task
from procmem.core.feedback import NO_KNOWN_ANSWER
from procmem.core.keys import normalize_question
from procmem.core.prompts import ANSWER_STOP
from procmem.core.registry import GateReport, PairedTest, SuiteResult
from procmem.distill.config import GateConfig
from procmem.llm import LLM
from procmem.verifiers import build_verifier

__all__ = ["UNSCORABLE_VERIFIERS", "SuiteScores", "compare", "evaluate", "held_out", "mcnemar", "split_held_out"]

UNSCORABLE_VERIFIERS = frozenset({NO_KNOWN_ANSWER})
"""Verifier specs nothing passes (:data:`~procmem.core.feedback.NO_KNOWN_ANSWER`, ``regex:(?!)``: an answer judged
wrong without a correction): an episode with one cannot be re-scored, so it is never a gate item."""


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


def held_out(question: str, share: float) -> bool:
    """Whether ``question`` falls in the held-out ``share``: decided by a SHA-256 of its normalised text (case
    and spacing aside), so it is the same on every run and in every process, and repeats of a question go
    the same way."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(normalize_question(question).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def _rescorable(task: Task) -> bool:
    if task.verifier.strip() in UNSCORABLE_VERIFIERS:
        return False
    try:
        build_verifier(task)
    except ProcmemError:
        return False
    return True


def split_held_out(episodes: Iterable[Episode], suites: Collection[str], config: GateConfig
                   ) -> tuple[list[Episode], dict[str, list[Task]]]:
    """Hold out ``config.heldout_share`` of the questions of ``suites``' episodes for the gate.

    A question is held out when :func:`held_out` picks it and one of its episodes in ``suites`` can be re-scored
    (its verifier builds and is not in :data:`UNSCORABLE_VERIFIERS`). Returns the episodes left to train on (every
    episode of a held-out question is removed, in any suite, so nothing of it is trained on) and, per suite of
    ``suites``, the gate items: one task per held-out question, from its newest re-scorable episode, at most the
    newest ``config.n_test``, oldest first. Every suite of ``suites`` has an entry, possibly empty.
    """
    episodes = list(episodes)
    newest: dict[str, Episode] = {}
    for episode in sorted(episodes, key=lambda e: (e.finished_at, e.id)):
        task = episode.task
        if task.suite in suites and held_out(task.prompt, config.heldout_share) and _rescorable(task):
            newest[normalize_question(task.prompt)] = episode
    items: dict[str, list[Task]] = defaultdict(list)
    for episode in sorted(newest.values(), key=lambda e: (e.finished_at, e.id)):
        items[episode.task.suite].append(episode.task)
    train = [e for e in episodes if normalize_question(e.task.prompt) not in newest]
    return train, {suite: items[suite][-config.n_test:] for suite in suites}
