"""``numeric:<gold>[?tol=<abs>][&rel=<rel>]``: the answer is a number close enough to the gold value.

- ``numeric:42`` accepts ``42``, ``42.0``, ``+42``, ``4.2e1`` and ``42.`` (one trailing period is
  ignored); ``numeric:0.75`` also accepts ``3/4``.
- ``tol`` is an absolute tolerance, ``rel`` a relative one (a fraction of ``|gold|``); the answer
  passes when ``|answer - gold| <= max(tol, rel * |gold|)``. Both default to 0: exact equality,
  computed with exact fractions (no float rounding).
- The gold and the answer may be an integer, a decimal (``3.14``, ``.5``, ``1e-3``) or a fraction
  (``1/3``); answers may group thousands with commas (``1,234``). Nothing else is read as a number:
  ``the answer is 42`` fails with feedback asking for a bare number.

The canonical form of a passing answer (:meth:`NumericVerifier.canonical`, what distillation trains on) is the
value it was read as, written plainly: ``42.``, ``+42``, ``42.0`` and ``4.2e1`` are ``42``; ``1,234`` is ``1234``;
``3/4`` and ``.750`` are ``0.75``; ``1/3`` stays ``1/3``.

``details["well_formed"]`` says whether the answer was read as a number at all (a report splits format from
correctness with it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import fail, malformed_spec, show
from procmem.verifiers.base import register_verifier

__all__ = ["NumericVerifier", "canonical_number", "parse_number"]

_SYNTAX = "numeric:<number>[?tol=<abs>][&rel=<rel>], e.g. numeric:42 or numeric:3.14?tol=0.01"
_NUMBER = re.compile(
    r"(?P<sign>[+-]?)(?:(?P<num>\d+)/(?P<den>\d+)"
    r"|(?P<int>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<frac>\d*))?(?:[eE](?P<exp>[+-]?\d{1,4}))?)"
)
_MAX_DIGITS = 400
_MAX_EXPONENT = 1000
_MAX_CANONICAL = 40
"""Longer plain renderings (``1e300``) are not canonical forms: the answer keeps its own text."""


def parse_number(text: str) -> Fraction | None:
    """The exact value of a number written as an integer, decimal or fraction; None for anything else."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    match = _NUMBER.fullmatch(text)
    if match is None or len(text) > _MAX_DIGITS:
        return None
    sign = -1 if match["sign"] == "-" else 1
    if match["num"] is not None:
        den = int(match["den"])
        return None if den == 0 else sign * Fraction(int(match["num"]), den)
    whole, frac = (match["int"] or "").replace(",", ""), match["frac"] or ""
    if not whole and not frac:
        return None
    exponent = int(match["exp"] or 0)
    if abs(exponent) > _MAX_EXPONENT:
        return None
    return sign * Fraction(int(whole + frac or "0"), 10 ** len(frac)) * Fraction(10) ** exponent


@dataclass(frozen=True)
class NumericVerifier:
    gold_text: str
    gold: Fraction
    tol: Fraction = Fraction(0)
    rel: Fraction = Fraction(0)

    def verify(self, answer: str) -> Verdict:
        got = answer.strip()
        secrets = (self.gold_text, _plain(self.gold))
        if not got:
            return _formed(fail(["the answer is empty; expected a number on one line"], secrets), False)
        value = parse_number(got)
        if value is None:
            return _formed(fail([f"expected a number, got {show(got)}", "expected a bare number and nothing else"],
                                secrets), False)
        if abs(value - self.gold) <= max(self.tol, self.rel * abs(self.gold)):
            return Verdict(passed=True, score=1.0, details={"well_formed": True})
        what = "value" if not (self.tol or self.rel) else "value (within the allowed tolerance)"
        return _formed(fail([f"{show(got)} is not the correct {what}", f"that is not the correct {what}"], secrets),
                       True)

    def canonical(self, answer: str) -> str | None:
        """The value a passing ``answer`` was read as, written plainly (``57.`` -> ``57``); None if it fails."""
        value = parse_number(answer)
        if value is None or abs(value - self.gold) > max(self.tol, self.rel * abs(self.gold)):
            return None
        return canonical_number(value)


def _formed(verdict: Verdict, well_formed: bool) -> Verdict:
    return Verdict(passed=verdict.passed, score=verdict.score, feedback=verdict.feedback,
                   details={"well_formed": well_formed})


def canonical_number(value: Fraction) -> str | None:
    """``value`` as an integer, else an exact decimal, else ``p/q``; None when that is unreasonably long."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value.denominator == 1:
        text = str(value.numerator)
    else:
        places = next((k for k in range(_MAX_CANONICAL) if (10**k) % value.denominator == 0), None)
        if places is None:
            text = f"{value.numerator}/{value.denominator}"
        else:
            digits = str(value.numerator * 10**places // value.denominator).rjust(places + 1, "0")
            text = f"{digits[:-places]}.{digits[-places:]}"
    return sign + text if len(text) <= _MAX_CANONICAL else None


def _plain(value: Fraction) -> str:
    """A plain decimal rendering of the gold (so ``numeric:4.0`` also hides ``4``)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):g}"


def _options(query: str, task: Task) -> dict[str, Fraction]:
    options: dict[str, Fraction] = {}
    for pair in filter(None, query.split("&")):
        key, sep, raw = pair.partition("=")
        value = parse_number(raw) if sep else None
        if key not in ("tol", "rel"):
            raise malformed_spec(task, f"unknown option {key!r} (options are tol and rel)", _SYNTAX)
        if value is None or value < 0:
            raise malformed_spec(task, f"{key} must be a non-negative number, got {raw!r}", _SYNTAX)
        options[key] = value
    return options


@register_verifier("numeric")
def _build(argument: str, task: Task) -> NumericVerifier:
    gold_text, _, query = argument.strip().partition("?")
    gold = parse_number(gold_text)
    if gold is None:
        raise malformed_spec(task, f"the gold value {gold_text!r} is not a number", _SYNTAX)
    return NumericVerifier(gold_text.strip(), gold, **_options(query, task))
