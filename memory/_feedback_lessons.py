"""Verifier-grounded lessons: what the feedback on failed attempts says, read deterministically, with no model.

A verifier's feedback names what was wrong with an answer but never the gold answer (see
:mod:`procmem.verifiers`), so these lessons say only what the feedback says:

- per problem, an **insight** (kind ``lesson``) for each kind of failure its attempts met: an answer of the
  wrong form ("expected an integer, got '6.'"), an empty answer, a partly right answer, or a wrong answer
  repeated (a retry that gives the rejected answer again cannot pass); any other feedback is quoted;
- per suite family (``rg:products`` for every ``rg:products?...``), a **pattern** for each kind of failure that
  at least ``min_problems`` problems met, scoped to that family, with the count of problems it is drawn from.

Every entry is labelled ``source="verifier"`` and ``method="feedback"``; :func:`feedback_lessons` is pure
(tested on known feedback), :func:`~procmem.memory._learning.reflect` writes what it returns.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from procmem.memory._entries import suite_family
from procmem.memory._problems import Problem

__all__ = ["FeedbackLesson", "feedback_lessons"]

_FORM = re.compile(r"^expected (?P<form>an integer|a number|a single word)(?:, got (?P<got>.+)| and nothing else)$")
_EMPTY = re.compile(r"^the answer is empty")
_PARTLY = re.compile(r"only partly right")
_WRONG = re.compile(r"^(?P<got>'.*') is not the correct \w+$|^that is not the correct \w+$")
_QUOTE_CHARS = 120


@dataclass(frozen=True)
class FeedbackLesson:
    """One lesson read from feedback: for one problem (``problem`` set, an insight) or for a suite family
    (``problem`` empty, a pattern scoped to ``scope``) backed by ``problems``."""

    kind: str
    """What failed: ``form``, ``empty``, ``partly``, ``repeated`` or ``other``."""
    text: str
    suite: str
    problems: tuple[str, ...]
    problem: str = ""
    scope: str = ""


def feedback_lessons(problems: Sequence[Problem], *, min_problems: int = 2) -> list[FeedbackLesson]:
    """The lessons the feedback of ``problems``' failed attempts supports: per problem, then per suite family
    (kinds met by at least ``min_problems`` problems of the family). Deterministic, in a stable order."""
    lessons: list[FeedbackLesson] = []
    family: dict[tuple[str, str], list[tuple[Problem, str]]] = defaultdict(list)
    for problem in problems:
        for kind, detail in _failures(problem):
            lessons.append(FeedbackLesson(kind=kind, text=_problem_text(kind, detail), suite=problem.suite,
                                          problems=(problem.key,), problem=problem.key))
            family[(suite_family(problem.suite), kind)].append((problem, detail))
    for (scope, kind), members in sorted(family.items()):
        keys = tuple(dict.fromkeys(p.key for p, _ in members))
        if kind == "other" or len(keys) < min_problems:
            continue
        examples = list(dict.fromkeys(d for _, d in members if d))[:3]
        lessons.append(FeedbackLesson(kind=kind, text=_family_text(kind, len(keys), examples, scope),
                                      suite=members[0][0].suite, problems=keys, scope=scope))
    return lessons


def _failures(problem: Problem) -> list[tuple[str, str]]:
    """(kind, detail) of each kind of failure among the problem's attempts, in first-seen order."""
    found: dict[str, str] = {}
    wrong: dict[str, int] = defaultdict(int)
    for attempt in problem.failed_attempts:
        feedback = " ".join(attempt.verdict.feedback.split())
        answer = " ".join(attempt.answer.split())
        form = _FORM.match(feedback)
        if form:
            found.setdefault("form", f"{form.group('form')}|{_quote(answer)}")
        elif _EMPTY.match(feedback):
            found.setdefault("empty", "")
        elif _PARTLY.search(feedback):
            found.setdefault("partly", _quote(answer))
        elif _WRONG.match(feedback):
            wrong[answer] += 1
        elif feedback:
            found.setdefault("other", _clip(feedback))
    repeated = [a for a, n in wrong.items() if n >= 2 and a]
    if repeated:
        found["repeated"] = f"{_quote(repeated[0])}|{wrong[repeated[0]]}"
    return list(found.items())


def _problem_text(kind: str, detail: str) -> str:
    if kind == "form":
        form, answer = detail.split("|", 1)
        return f"Answer with {form} and nothing else: the answer {answer} was rejected for its form."
    if kind == "empty":
        return "Never leave the answer empty: an empty answer was rejected."
    if kind == "partly":
        return f"Give exactly the answer and nothing else: the answer {detail} was only partly right."
    if kind == "repeated":
        answer, times = detail.split("|", 1)
        return f"The answer {answer} was wrong {times} times here: a retry must give a different answer."
    return f"A failed attempt got this feedback: {detail}"


def _family_text(kind: str, n: int, examples: list[str], scope: str) -> str:
    if kind == "form":
        forms = sorted({e.split("|", 1)[0] for e in examples})
        shown = ", ".join(e.split("|", 1)[1] for e in examples)
        return (f"In {scope}, answer with {' or '.join(forms)} and nothing else: answers of another form failed "
                f"on {n} problems (e.g. {shown}).")
    if kind == "empty":
        return f"In {scope}, never leave the answer empty: empty answers failed on {n} problems."
    if kind == "partly":
        return (f"In {scope}, give exactly the answer and nothing else: answers were only partly right on {n} "
                f"problems (e.g. {', '.join(examples)}).")
    return (f"In {scope}, a retry must change the answer: the same wrong answer was given again on {n} "
            "problems, and it never passed.")


def _quote(answer: str) -> str:
    return repr(_clip(answer)) if answer else "''"


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"
