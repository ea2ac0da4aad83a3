"""Every built-in verifier kind runs procmem.testing's verifier conformance suite; the suite can fail."""

from __future__ import annotations

import pytest

from procmem.core import Task, Verdict
from procmem.tasks import load_suite
from procmem.testing import VerifierCase, VerifierConformance
from procmem.verifiers import RGVerifier, build_verifier, verifier_kinds


def _task(verifier: str) -> Task:
    return Task(id=f"case-{verifier}", prompt="(a conformance task)", verifier=verifier, suite="conformance")


def _rg_cases() -> list[VerifierCase]:
    """Real reasoning-gym tasks: a numeric answer, a word answer, and a scorer that raises on junk."""
    specs = {
        "rg-chain_sum": "rg:chain_sum?min_terms=2&max_terms=2&min_digits=2&max_digits=2",
        "rg-spell_backward": "rg:spell_backward?min_word_len=4&max_word_len=6",
        "rg-prime_factorization": "rg:prime_factorization?min_value=20&max_value=200",
    }
    cases = []
    for name, spec in specs.items():
        task = load_suite(spec, split="test", n=1)[0]
        verifier = build_verifier(task)
        assert isinstance(verifier, RGVerifier)
        gold = str(verifier.entry["answer"])
        wrong = [gold[::-1] + "x", f"The answer is {gold}", f"{gold} {gold}", gold + "0"]
        cases.append(VerifierCase(name, task, right=(gold, f"  {gold}\n"), wrong=wrong, secrets=(gold,)))
    return cases


def _code_cases() -> list[VerifierCase]:
    """The sandboxed code verifier (``procmem.verifiers.code``), when it is installed."""
    if "code" not in verifier_kinds():
        return []
    task = Task(id="case-code", prompt="Write add(a, b).", verifier="code:add", suite="conformance",
                metadata={"entry_point": "add", "io": [[[1000, 2345], 3345], [[-17, 17], 0]]})
    right = ("def add(a, b):\n    return a + b", "```python\nadd = lambda a, b: b + a\n```")
    wrong = ("def add(a, b):\n    return a - b", "def add(a, b):\n    raise ValueError", "add = 5")
    return [VerifierCase("code", task, right=right, wrong=wrong, secrets=("3345",))]


def builtin_cases() -> list[VerifierCase]:
    """One or more cases for every registered built-in kind."""
    return [
        VerifierCase("exact-word", _task("exact:Paris"), right=("Paris", " paris. ", "PARIS"),
                     wrong=("London", "Paris, France", "Pari", "the answer is Paris"), secrets=("Paris",)),
        VerifierCase("exact-number", _task("exact:42"), right=("42", "42."),
                     wrong=("41", "forty-two", "42 apples", "420", "4 2"), secrets=("42",)),
        VerifierCase("exact-short-word", _task("exact:no"), right=("no", "No."),
                     wrong=("yes", "no way", "maybe not"), secrets=("no",)),
        VerifierCase("numeric-tol", _task("numeric:3.14?tol=0.01"), right=("3.14", "3.145", "3.13", "+3.14"),
                     wrong=("3.2", "pi", "3,14", "3.14 meters", "314e-2x"), secrets=("3.14",)),
        VerifierCase("numeric-int", _task("numeric:1234"), right=("1234", "1,234", "1234.0", "1.234e3", "1234."),
                     wrong=("1235", "12345", "1 234", "about 1234", "-1234"), secrets=("1234",)),
        VerifierCase("numeric-rel", _task("numeric:0.25?rel=0.1"), right=("1/4", ".25", "0.26", "2.5e-1"),
                     wrong=("0.3", "1/3", "25%"), secrets=("0.25",)),
        VerifierCase("regex", _task("regex:(?i)(yes|no)"), right=("Yes", "no", " NO "),
                     wrong=("maybe", "yes no", "yes."), secrets=("(?i)(yes|no)",)),
        VerifierCase("math-frac", _task("math:\\frac{1}{2}"), right=("0.5", "1/2", "\\frac{2}{4}", "$\\frac{1}{2}$"),
                     wrong=("0.6", "2", "x", "\\frac{1}{3}"), secrets=("\\frac{1}{2}",)),
        VerifierCase("math-poly", _task("math:x^2+2x+1"), right=("(x+1)^2", "$x^2 + 2x + 1$", "x^2+2*x+1"),
                     wrong=("x^2+1", "(x-1)^2", "2x"), secrets=("x^2+2x+1",)),
        VerifierCase("ledger", _task("ledger:-37"), right=("-37.00", " -37.00 "),
                     wrong=("-37", "-37.0", "37.00", "+37.00", "minus 37"), secrets=("-37.00",)),
        *_rg_cases(),
        *_code_cases(),
    ]


CASES = builtin_cases()


class TestBuiltinVerifiers(VerifierConformance):
    @pytest.fixture(params=CASES, ids=[c.name for c in CASES])
    def verifier_case(self, request: pytest.FixtureRequest) -> VerifierCase:
        return request.param


def test_every_registered_kind_has_a_conformance_case() -> None:
    covered = {c.task.verifier.partition(":")[0] for c in CASES}
    missing = set(verifier_kinds()) - covered
    assert not missing, f"add a VerifierCase for {sorted(missing)} to builtin_cases"
    assert {"exact", "numeric", "regex", "math", "rg"} <= covered


def test_the_suite_catches_a_verifier_that_leaks_the_gold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite must be able to fail: a verifier that says the gold is rejected."""
    from procmem.verifiers import exact

    def leaky(self: exact.ExactVerifier, answer: str) -> Verdict:
        passed = exact.normalize(answer) == exact.normalize(self.gold)
        return Verdict(passed=passed, score=float(passed), feedback="" if passed else f"it was {self.gold}")

    monkeypatch.setattr(exact.ExactVerifier, "verify", leaky)
    case = next(c for c in CASES if c.name == "exact-word")
    suite = TestBuiltinVerifiers()
    suite.test_right_answers_pass_with_score_one_and_wrong_ones_fail(case)  # it still judges right
    with pytest.raises(AssertionError, match="reveals the gold"):
        suite.test_every_verdict_is_well_formed_and_reveals_no_secret(case)
