"""``ledger:``: the convention suite's verifier. The form is a rule only its feedback states."""

from __future__ import annotations

import pytest

from procmem.core import ProcmemError, Task
from procmem.tasks import load_suite
from procmem.verifiers import Verifier, build_verifier, canonical_answer, reference_answer
from procmem.verifiers.ledger import CONVENTION


def _verifier(gold: str) -> Verifier:
    return build_verifier(Task(id="l", prompt="Ledger: post a withdrawal of 37.", verifier=f"ledger:{gold}"))


def test_only_the_signed_two_decimal_amount_passes() -> None:
    verifier = _verifier("-37")
    assert verifier.verify(" -37.00 ").passed
    for wrong in ("-37", "-37.0", "37.00", "+37.00", "-37.000", "minus 37", ""):
        assert not verifier.verify(wrong).passed, wrong
    assert _verifier("5").verify("+5.00").passed and not _verifier("5").verify("5.00").passed


def test_feedback_states_the_convention_but_never_the_amount() -> None:
    verifier = _verifier("-37")
    for answer in ("-37", "37", "thirty-seven", ""):
        verdict = verifier.verify(answer)
        assert CONVENTION in verdict.feedback and "-37.00" not in verdict.feedback, answer
        assert verdict.details == {"well_formed": False}
    wrong_value = verifier.verify("+12.00")
    assert "right form" in wrong_value.feedback and wrong_value.details == {"well_formed": True}
    assert "37" not in wrong_value.feedback


def test_canonical_and_reference_are_the_house_format() -> None:
    verifier = _verifier("12.5")
    assert canonical_answer(verifier, "+12.50") == "+12.50"
    task = Task(id="l", prompt="p", verifier="ledger:-3")
    assert reference_answer(task) == "-3.00"


def test_a_gold_that_is_not_a_number_is_a_located_error() -> None:
    with pytest.raises(ProcmemError, match="not a number"):
        _verifier("lots")


def test_the_builtin_suite_splits_disjointly_and_its_majority_answer_is_rare() -> None:
    train = load_suite("builtin:ledger", split="train", n=300, check=build_verifier)
    test = load_suite("builtin:ledger", split="test", n=340, check=build_verifier)
    assert len(train) == 300 and len(test) == 340
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    golds = [reference_answer(t) for t in test]
    assert max(golds.count(g) for g in set(golds)) / len(golds) <= 0.25
    assert all("two decimals" not in t.prompt and "sign" not in t.prompt for t in train + test)  # never stated
