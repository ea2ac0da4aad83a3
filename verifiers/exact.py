"""``exact:<gold>``: the answer equals the gold answer after normalization.

Normalization (applied to both sides): Unicode NFKC, strip, casefold, collapse runs of whitespace to
one space, and drop one trailing period. So ``exact:New York`` accepts ``new  york.`` but not
``New York City``. Everything after the first ``:`` is the gold answer, colons included
(``exact:3:45``). Use ``regex:`` for several accepted answers.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import describe_form, fail, malformed_spec, wrong_answer_feedback
from procmem.verifiers.base import register_verifier

__all__ = ["ExactVerifier", "normalize"]


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


@register_verifier("exact")
def _build(argument: str, task: Task) -> ExactVerifier:
    if not normalize(argument):
        raise malformed_spec(task, "the gold answer is empty", "exact:<answer>, e.g. exact:42")
    return ExactVerifier(argument)
