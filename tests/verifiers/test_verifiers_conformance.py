"""Every built-in verifier kind runs the conformance suite."""

from __future__ import annotations

import pytest
from verifier_conformance import VerifierCase, builtin_cases, check_verifier

from procmem.verifiers import verifier_kinds

CASES = builtin_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_builtin_verifier_conforms(case: VerifierCase) -> None:
    check_verifier(case)


def test_every_registered_kind_has_a_conformance_case() -> None:
    covered = {c.task.verifier.partition(":")[0] for c in CASES}
    missing = set(verifier_kinds()) - covered
    assert not missing, f"add a VerifierCase for {sorted(missing)} to verifier_conformance.builtin_cases"
    assert {"exact", "numeric", "regex", "math", "rg"} <= covered


def test_the_suite_catches_a_verifier_that_leaks_the_gold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite must be able to fail: a verifier that says the gold is rejected."""
    from procmem.core import Verdict
    from procmem.verifiers import exact

    def leaky(self: exact.ExactVerifier, answer: str) -> Verdict:
        passed = exact.normalize(answer) == exact.normalize(self.gold)
        return Verdict(passed=passed, score=float(passed), feedback="" if passed else f"it was {self.gold}")

    monkeypatch.setattr(exact.ExactVerifier, "verify", leaky)
    case = next(c for c in CASES if c.name == "exact-word")
    with pytest.raises(AssertionError, match="reveals the gold"):
        check_verifier(case)
