"""``regex:<pattern>``: the whole stripped answer matches the Python regular expression.

Everything after the first ``:`` is the pattern; it must match the entire answer (``re.fullmatch``),
so ``regex:\\d+`` rejects ``42 apples``. Inline flags work: ``regex:(?i)yes|y``. The pattern is
never shown in feedback (it usually spells out the accepted answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import fail, malformed_spec, show
from procmem.verifiers.base import register_verifier

__all__ = ["RegexVerifier"]

_SYNTAX = "regex:<python regular expression>, e.g. regex:(?i)yes|no"


@dataclass(frozen=True)
class RegexVerifier:
    pattern: re.Pattern[str]

    def verify(self, answer: str) -> Verdict:
        got = answer.strip()
        if self.pattern.fullmatch(got):
            return Verdict(passed=True, score=1.0)
        secrets = (self.pattern.pattern,)
        if not got:
            return fail(["the answer is empty; expected an answer on one line"], secrets)
        return fail([f"{show(got)} does not have the expected form", "the answer does not have the expected form"],
                    secrets)


@register_verifier("regex")
def _build(argument: str, task: Task) -> RegexVerifier:
    if not argument:
        raise malformed_spec(task, "the pattern is empty", _SYNTAX)
    try:
        return RegexVerifier(re.compile(argument))
    except re.error as err:
        raise malformed_spec(task, f"the pattern does not compile ({err})", _SYNTAX) from None
