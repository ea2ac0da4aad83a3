"""Feedback to episode: the one rule that turns an answer and what was learned about it later into a memory episode.

``procmem serve`` (feedback sent to ``/v1/episodes/{id}/feedback``), ``procmem chat`` (``/good``, ``/bad``,
``/correct``) and anything else that judges answers after the fact use :func:`feedback_episode`; distillation
reads corrections back with :func:`is_correction`.

An answer is **verified** when it has feedback (a score, passed/failed, or a correction) or a verifier's verdict.
Only verified answers become episodes. The episode's attempts are the model's (its own verified attempts, or its
answer with the latest judgement of it: a person's judgement wins over the verifier's), then, when a correction
was sent, the correction as a passing attempt marked ``details.correction``. Its verifier is the task's own, else
``exact:<correction>``, else ``exact:<answer>`` for an answer judged right, else :data:`NO_KNOWN_ANSWER`
(nothing is known to pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from procmem.core.types import Attempt, Episode, Task, Verdict

__all__ = ["NO_KNOWN_ANSWER", "Feedback", "feedback_episode", "is_correction"]

NO_KNOWN_ANSWER = "regex:(?!)"
"""The verifier of an answer judged wrong without a correction: a pattern that matches nothing."""


@dataclass(frozen=True)
class Feedback:
    """What someone learned about an answer, later. ``passed`` or ``score`` judge it; ``correction`` is the right
    answer."""

    passed: bool | None = None
    score: float | None = None
    comment: str = ""
    correction: str | None = None
    source: str = "user"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feedback:
        """From a stored feedback body (the HTTP API's fields: passed, score, comment, correction, source)."""
        correction = data.get("correction")
        return cls(passed=None if data.get("passed") is None else bool(data["passed"]),
                   score=None if data.get("score") is None else float(data["score"]),
                   comment=str(data.get("comment") or ""),
                   correction=str(correction).strip() if correction else None,
                   source=str(data.get("source") or "user"))

    @property
    def judges(self) -> bool:
        return self.passed is not None or self.score is not None

    def verdict(self) -> Verdict:
        """The judgement as a verdict: ``passed`` if given, else a score of 1.0 counts as a pass."""
        passed = self.passed if self.passed is not None else (self.score is not None and self.score >= 1.0)
        score = self.score if self.score is not None else float(passed)
        return Verdict(passed=passed, score=score, feedback=self.comment, details={"source": self.source})


def is_correction(attempt: Attempt) -> bool:
    """Whether an attempt is a correction someone sent (a verified answer that distillation trains on as it is)."""
    return attempt.verdict.passed and bool(attempt.verdict.details.get("correction"))


def feedback_episode(task: Task, answer: str, feedback: Sequence[Feedback], *, verdict: Verdict | None = None,
                     attempts: Sequence[Attempt] = (), prompt_tokens: int = 0, completion_tokens: int = 0,
                     **episode: Any) -> Episode | None:
    """The episode of ``answer`` to ``task`` given ``feedback`` (oldest first), or None while it is unverified.

    ``verdict`` is a verifier's judgement of ``answer``; ``attempts`` the model's own attempts when a verifier
    already judged them in the loop (their last one is ``answer``). ``episode`` holds the other
    :class:`~procmem.core.Episode` fields (model_id, adapter_version, memory_ids, id, started_at, finished_at).
    """
    judged = [f for f in feedback if f.judges]
    corrections = [f for f in feedback if f.correction]
    if not judged and not corrections and verdict is None and not attempts:
        return None
    own = list(attempts) or [Attempt(answer, verdict or _corrected(corrections), prompt_tokens, completion_tokens)]
    if judged:  # a person's latest judgement wins over the verifier's
        own[-1] = replace(own[-1], verdict=judged[-1].verdict())
    spec = task.verifier
    if corrections:
        last = corrections[-1]
        assert last.correction is not None
        own.append(Attempt(last.correction, Verdict(passed=True, score=1.0, feedback="",
                                                     details={"correction": True, "source": last.source})))
        spec = spec or f"exact:{last.correction}"
    elif own[-1].verdict.passed:
        spec = spec or f"exact:{own[-1].answer}"
    judged_task = Task(id=task.id, prompt=task.prompt, verifier=spec or NO_KNOWN_ANSWER, suite=task.suite,
                       split="train", metadata=dict(task.metadata))
    return Episode(task=judged_task, attempts=tuple(own), **episode)


def _corrected(corrections: Sequence[Feedback]) -> Verdict:
    """An answer that only got a correction was wrong."""
    last = corrections[-1] if corrections else Feedback()
    return Verdict(passed=False, score=0.0, feedback=last.comment or "corrected", details={"source": last.source})
