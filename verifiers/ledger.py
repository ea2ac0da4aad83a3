"""``ledger:<gold>``: an amount in a house format that only the feedback states.

The answer must be the gold value written the ledger's way: an explicit sign and exactly two decimals
(``+7.00``, ``-12.50``, ``+0.00``). Nothing in a task's prompt says so. An answer in another form
(``7``, ``7.0``, ``-12.5``) fails with feedback that states the convention (never the value), so an agent
that keeps what feedback taught across episodes can learn the rule, and one that does not must relearn it
on every problem. This is the convention suite of the evidence experiment (``builtin:ledger``, see
``eval/configs/paper.toml``).

Every verdict says in ``details["well_formed"]`` whether the answer was in the house format, so a report
can tell format learning (well-formed) from procedure learning (correct when well-formed).

The canonical form of a passing answer is the gold in the house format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import fail, malformed_spec, show
from procmem.verifiers.base import register_verifier
from procmem.verifiers.numeric import parse_number

__all__ = ["CONVENTION", "LedgerVerifier", "ledger_format"]

_SYNTAX = "ledger:<number>, e.g. ledger:-3 or ledger:12.5"
_FORM = re.compile(r"[+-]\d+\.\d{2}")
CONVENTION = "amounts are written with an explicit sign and exactly two decimals, like +1.25 or -0.50"
"""What the feedback says about the form (the rule the suite's tasks never state)."""


def ledger_format(value: Fraction) -> str:
    """``value`` in the house format: ``+7.00``, ``-12.50`` (zero is ``+0.00``)."""
    cents = round(value * 100)
    sign = "-" if cents < 0 else "+"
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


@dataclass(frozen=True)
class LedgerVerifier:
    gold: Fraction

    @property
    def reference(self) -> str:
        """The gold in the house format (for baselines and reports; never shown to a model)."""
        return ledger_format(self.gold)

    def verify(self, answer: str) -> Verdict:
        got = answer.strip()
        secrets = (ledger_format(self.gold),)  # the convention's examples are never a suite's (whole) gold
        well_formed = _FORM.fullmatch(got) is not None
        details = {"well_formed": well_formed}
        if not got:
            verdict = fail([f"the answer is empty; {CONVENTION}"], secrets)
        elif not well_formed:
            verdict = fail([f"{show(got)} is not in the ledger's form: {CONVENTION}",
                            f"the answer is not in the ledger's form: {CONVENTION}"], secrets)
        elif parse_number(got) == self.gold:
            return Verdict(passed=True, score=1.0, details=details)
        else:
            verdict = fail([f"{show(got)} is in the right form but is not the correct amount",
                            "the form is right but that is not the correct amount"], secrets)
        return Verdict(passed=False, score=verdict.score, feedback=verdict.feedback, details=details)

    def canonical(self, answer: str) -> str | None:
        """The gold in the house format, for a passing ``answer``."""
        return ledger_format(self.gold) if self.verify(answer).passed else None


@register_verifier("ledger")
def _build(argument: str, task: Task) -> LedgerVerifier:
    gold = parse_number(argument.strip())
    if gold is None:
        raise malformed_spec(task, f"the gold value {argument.strip()!r} is not a number", _SYNTAX)
    return LedgerVerifier(gold)
