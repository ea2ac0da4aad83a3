"""Feedback helpers shared by the built-in verifiers.

Feedback is shown to the model on a retry, so it must say what was wrong (the expected form, what was
got) and must never reveal the gold answer. :func:`safe_feedback` is the last line of defence: it takes
messages from most to least specific and returns the first one in which no secret appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from procmem.core import ProcmemError, Task, Verdict

__all__ = [
    "GENERIC_FAILURES",
    "describe_form",
    "fail",
    "form_mismatch",
    "is_integer",
    "is_number",
    "leaks",
    "malformed_spec",
    "safe_feedback",
    "show",
    "wrong_answer_feedback",
]

GENERIC_FAILURES = ("that is not the correct answer", "not correct", "wrong", "incorrect", "no")
"""Last-resort messages, tried in order when every specific message would reveal a secret."""

_SHOW_LIMIT = 40
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?\d+/\d+")


def show(answer: str) -> str:
    """The answer quoted for feedback: one line of printable characters, cut to a readable length."""
    text = "".join(ch if ch.isprintable() else "?" for ch in " ".join(answer.split()))
    if len(text) > _SHOW_LIMIT:
        return f"'{text[:_SHOW_LIMIT]}…' ({len(answer)} characters)"
    return f"'{text}'"


def leaks(text: str, secret: str) -> bool:
    """Whether ``secret`` can be read in ``text`` (case-insensitive).

    Short purely alphabetic secrets (``a``, ``no``) are matched as whole words, since as substrings they
    are in almost every sentence; anything else is matched as a plain substring.
    """
    needle = " ".join(secret.split()).casefold()
    if not needle:
        return False
    haystack = text.casefold()
    if len(needle) < 3 and needle.isalpha():
        return re.search(rf"(?<![^\W\d_]){re.escape(needle)}(?![^\W\d_])", haystack) is not None
    return needle in haystack


def safe_feedback(candidates: Iterable[str], secrets: Sequence[str]) -> str:
    """The first candidate (then generic message) in which no secret appears."""
    for message in (*candidates, *GENERIC_FAILURES):
        if message and not any(leaks(message, s) for s in secrets):
            return message
    return "✗"


def fail(candidates: Iterable[str], secrets: Sequence[str], score: float = 0.0) -> Verdict:
    """A failing verdict whose feedback is the first safe candidate."""
    return Verdict(passed=False, score=score, feedback=safe_feedback(candidates, secrets))


def is_integer(text: str) -> bool:
    return _INTEGER.fullmatch(text) is not None


def is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.replace(",", "")) is not None


def describe_form(gold: str | None) -> str | None:
    """The form of a gold answer in words (``an integer``, ``a single word`` ...), or None when it has no
    simple form. It names the kind of answer, never the answer."""
    if gold is None:
        return None
    text = " ".join(gold.split())
    if is_integer(text):
        return "an integer"
    if is_number(text):
        return "a number"
    if text and " " not in text and text.isalpha():
        return "a single word"
    return None


def form_mismatch(form: str | None, answer: str) -> bool:
    """Whether ``answer`` (already stripped) visibly lacks the expected ``form``."""
    if form == "an integer":
        return not is_integer(answer)
    if form == "a number":
        return not is_number(answer)
    if form == "a single word":
        return " " in " ".join(answer.split()) or not answer
    return False


def wrong_answer_feedback(answer: str, form: str | None, *, what: str = "answer") -> list[str]:
    """Candidate messages for a wrong ``answer``, from most to least specific."""
    if not answer:
        return [f"the answer is empty; expected {form or 'an answer'} on one line"]
    if form_mismatch(form, answer):
        return [f"expected {form}, got {show(answer)}", f"expected {form} and nothing else"]
    return [f"{show(answer)} is not the correct {what}", f"that is not the correct {what}"]


def malformed_spec(task: Task, problem: str, syntax: str) -> ProcmemError:
    """The error for a spec whose kind is known but whose argument is not usable."""
    from procmem.verifiers.base import verifier_kinds

    return ProcmemError(f"malformed verifier spec {task.verifier!r}: {problem}", where=f"task {task.id}",
                        fix=f"write it as {syntax}; known kinds: {', '.join(verifier_kinds())}")
