"""``exact:<gold>``: the answer equals the gold answer after normalization.

Normalization (applied to both sides): Unicode NFKC, strip, casefold, collapse runs of whitespace to
one space, and drop one trailing period. So ``exact:New York`` accepts ``new  york.`` but not
``New York City``. Everything after the first ``:`` is the gold answer, colons included
(``exact:3:45``). Use ``regex:`` for several accepted answers.

The canonical form of a passing answer (:meth:`ExactVerifier.canonical`, what distillation trains on) is the
gold as written, on one line, without a sentence's closing period: ``exact:1.`` (a served answer someone
approved) trains ``1``; an abbreviation keeps its period (``U.S.``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import describe_form, fail, malformed_spec, wrong_answer_feedback
from procmem.verifiers.base import register_verifier

__all__ = ["ExactVerifier", "normalize"]

_ABBREVIATION = re.compile(r"(?:^|\s)(?:[^\W\d_]\.)+[^\W\d_]$")
"""``U.S``, ``e.g``: what is left of an abbreviation whose last period was taken away."""


def normalize(text: str) -> str:
    """The comparison form of an answer: NFKC, casefolded, single-spaced, no trailing period."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text[:-1].rstrip() if text.endswith(".") else text


@dataclass(frozen=True)
class ExactVerifier:
    gold: str

    @property
    def reference(self) -> str:
        return self.gold

    def verify(self, answer: str) -> Verdict:
        got = normalize(answer)
        if got == normalize(self.gold):
            return Verdict(passed=True, score=1.0)
        return fail(wrong_answer_feedback(answer.strip(), describe_form(normalize(self.gold))),
                    secrets=(self.gold, normalize(self.gold)))

    def canonical(self, answer: str) -> str | None:
        """The gold as written, single-spaced, without a closing period, for a passing ``answer``; else None."""
        if normalize(answer) != normalize(self.gold):
            return None
        form = " ".join(self.gold.split())
        if form.endswith(".") and not form.endswith("..") and not _ABBREVIATION.search(form[:-1]):
            form = form[:-1].rstrip()
        return form or None


@register_verifier("exact")
def _build(argument: str, task: Task) -> ExactVerifier:
    if not normalize(argument):
        raise malformed_spec(task, "the gold answer is empty", "exact:<answer>, e.g. exact:42")
    return ExactVerifier(argument)
