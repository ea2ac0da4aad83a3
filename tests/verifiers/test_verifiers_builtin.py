"""Behaviour of each built-in verifier beyond the conformance suite: spec syntax, normalization,
tolerances, reasoning-gym scoring rules, math-verify off the main thread, and spec errors."""

from __future__ import annotations

import json
import threading
from fractions import Fraction
from typing import Any

import pytest

from procmem.core import ProcmemError, Task, Verdict
from procmem.tasks import load_suite
from procmem.verifiers import RGVerifier, build_verifier, reference_answer, verifier_kinds
from procmem.verifiers import math as math_verifier
from procmem.verifiers._feedback import leaks, safe_feedback
from procmem.verifiers.numeric import parse_number


def _verify(spec: str, answer: str) -> Verdict:
    return build_verifier(Task(id="t", prompt="q", verifier=spec)).verify(answer)


@pytest.mark.parametrize(("answer", "passed"), [
    ("New York", True), ("  new   york. ", True), ("NEW YORK", True), ("New York.", True),
    ("New York City", False), ("NewYork", False), ("New York..", False),
])
def test_exact_normalizes_case_space_and_one_trailing_period(answer: str, passed: bool) -> None:
    assert _verify("exact:New York", answer).passed is passed


def test_exact_keeps_colons_in_the_gold() -> None:
    assert _verify("exact:3:45", "3:45").passed and not _verify("exact:3:45", "45").passed


def test_exact_feedback_names_the_expected_form_not_the_answer() -> None:
    assert _verify("exact:17", "seventeen").feedback == "expected an integer, got 'seventeen'"
    assert _verify("exact:17", "18").feedback == "'18' is not the correct answer"
    assert "17" not in _verify("exact:17", "I think 17").feedback


@pytest.mark.parametrize(("text", "value"), [
    ("42", Fraction(42)), ("-3.5", Fraction(-7, 2)), (".5", Fraction(1, 2)), ("1e3", Fraction(1000)),
    ("1,234,567", Fraction(1234567)), ("3/4", Fraction(3, 4)), ("42.", Fraction(42)), ("+7", Fraction(7)),
    ("2.5E-1", Fraction(1, 4)),
])
def test_numbers_are_read_exactly(text: str, value: Fraction) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", ".", "1/0", "1,23", "12,34,567", "one", "4 2", "1e99999", "0x10", "nan", "inf",
                                  "9" * 500])
def test_non_numbers_are_rejected(text: str) -> None:
    assert parse_number(text) is None


def test_numeric_tolerances() -> None:
    assert _verify("numeric:3.14?tol=0.01", "3.15").passed
    assert not _verify("numeric:3.14?tol=0.01", "3.151").passed
    assert _verify("numeric:200?rel=0.05", "209").passed and not _verify("numeric:200?rel=0.05", "211").passed
    assert _verify("numeric:0.1", "1/10").passed and not _verify("numeric:0.1", "0.1000001").passed
    assert _verify("numeric:1/3?tol=0.001", "0.333").passed


def test_numeric_feedback() -> None:
    assert _verify("numeric:17", "seventeen").feedback == "expected a number, got 'seventeen'"
    assert _verify("numeric:17", "18").feedback == "'18' is not the correct value"
    assert _verify("numeric:17", "the answer is 17").feedback == "expected a bare number and nothing else"
    assert _verify("numeric:17", "").feedback.startswith("the answer is empty")


def test_regex_must_match_the_whole_stripped_answer() -> None:
    assert _verify(r"regex:\d+", " 42 ").passed
    assert not _verify(r"regex:\d+", "42 apples").passed
    assert _verify("regex:(?i)yes|y", "YES").passed
    assert "yes" not in _verify("regex:(?i)yes|y", "no").feedback


def test_math_equivalence() -> None:
    assert _verify("math:\\frac{1}{2}", "0.5").passed
    assert _verify("math:x^2+2x+1", "(x+1)^2").passed
    assert not _verify("math:72", "I got 27").passed
    assert _verify("math:72", "a" * 2000).feedback.startswith("the answer is too long")


def test_math_works_off_the_main_thread() -> None:
    """math-verify's signal timeout raises ValueError off the main thread; the verifier must not."""
    results: list[tuple[Verdict, Verdict] | Exception] = []

    def work() -> None:
        try:
            results.append((_verify("math:\\frac{1}{2}", "0.5"), _verify("math:\\frac{1}{2}", "0.6")))
        except Exception as err:
            results.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert len(results) == 1 and isinstance(results[0], tuple), results
    right, wrong = results[0]
    assert right.passed and not wrong.passed and wrong.feedback == "'0.6' is not equal to the correct value"


def test_math_check_that_runs_over_its_limit_fails_and_the_pool_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = build_verifier(Task(id="t", prompt="q", verifier="math:\\frac{1}{2}"))
    math_verifier.shutdown_pool()
    monkeypatch.setattr(math_verifier, "LIMIT_SECONDS", 0.001)  # less than starting a worker process
    out: list[Verdict] = []
    worker = threading.Thread(target=lambda: out.append(verifier.verify("0.5")))
    worker.start()
    worker.join()
    assert not out[0].passed and "took too long" in out[0].feedback
    monkeypatch.setattr(math_verifier, "LIMIT_SECONDS", 30.0)
    worker = threading.Thread(target=lambda: out.append(verifier.verify("0.5")))
    worker.start()
    worker.join()
    assert out[1].passed


@pytest.fixture(scope="module")
def chain_task() -> Task:
    return load_suite("rg:chain_sum?min_terms=2&max_terms=2&min_digits=2&max_digits=2", split="train", n=1)[0]


def _gold(task: Task) -> str:
    return str(_rg(task).entry["answer"])


def _rg(task: Task) -> RGVerifier:
    verifier = build_verifier(task)
    assert isinstance(verifier, RGVerifier)
    return verifier


def test_rg_passes_only_a_full_score_and_strips_first(chain_task: Task) -> None:
    verifier, gold = build_verifier(chain_task), _gold(chain_task)
    assert verifier.verify(f"  {gold} \n") == Verdict(passed=True, score=1.0, details={"well_formed": True})
    partial = verifier.verify(f"{gold} is my answer")
    assert 0.0 < partial.score < 1.0 and not partial.passed
    assert partial.feedback == "expected an integer and nothing else"  # quoting the answer would show the gold
    assert partial.details == {"well_formed": False}  # the form apart from the value: a report splits them
    assert verifier.verify(str(int(gold) + 1)).details == {"well_formed": True}


def test_reference_answers_come_from_verifiers_that_hold_one(chain_task: Task) -> None:
    assert reference_answer(chain_task) == _gold(chain_task)
    assert build_verifier(chain_task).verify(reference_answer(chain_task) or "").passed
    assert reference_answer(Task(id="e", prompt="p", verifier="exact:New York")) == "New York"
    assert reference_answer(Task(id="r", prompt="p", verifier="regex:[0-9]+")) is None


def test_rg_scorer_that_raises_is_a_failed_verdict() -> None:
    task = load_suite("rg:prime_factorization?min_value=20&max_value=200", split="train", n=1)[0]
    verifier = _rg(task)
    with pytest.raises(Exception):  # noqa: B017 - the raw scorer really raises on junk
        verifier.dataset.score_answer("not a number", dict(verifier.entry))
    verdict = verifier.verify("not a number")
    assert not verdict.passed and verdict.score == 0.0 and verdict.feedback


def test_rg_task_rescored_after_a_json_round_trip(chain_task: Task) -> None:
    stored = Task.from_dict(json.loads(json.dumps(chain_task.to_dict())))
    assert build_verifier(stored).verify(_gold(chain_task)).passed


@pytest.mark.parametrize(("metadata", "problem"), [
    ({}, "no metadata"),
    ({"rg": {"dataset": "chain_sum"}}, "incomplete"),
    ({"rg": {"dataset": "products", "config": {}, "seed": 0, "size": 10, "index": 0, "question_sha": "x"}},
     "metadata is from 'products'"),
])
def test_rg_spec_without_usable_metadata_is_an_error(metadata: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProcmemError, match=problem) as err:
        build_verifier(Task(id="t", prompt="q", verifier="rg:chain_sum", metadata=metadata))
    assert "rg:chain_sum" in str(err.value)


def test_rg_refuses_a_question_it_cannot_rebuild(chain_task: Task) -> None:
    meta = {**chain_task.metadata["rg"], "question_sha": "0" * 64}
    with pytest.raises(ProcmemError, match="different question"):
        build_verifier(Task(id="t", prompt="q", verifier="rg:chain_sum", metadata={"rg": meta}))


@pytest.mark.parametrize(("spec", "problem"), [
    ("nosuch:1", "unknown verifier spec 'nosuch:1'"),
    ("", "unknown verifier spec ''"),
    ("exact:", "gold answer is empty"),
    ("exact", "gold answer is empty"),
    ("numeric:abc", "is not a number"),
    ("numeric:1?tol=-1", "tol must be a non-negative number"),
    ("numeric:1?tolerance=1", "unknown option 'tolerance'"),
    ("regex:(", "does not compile"),
    ("regex:", "pattern is empty"),
    ("math:", "gold answer is empty"),
    ("math:\\", "cannot read the gold"),
])
def test_bad_specs_are_errors_naming_the_spec_and_the_known_kinds(spec: str, problem: str) -> None:
    with pytest.raises(ProcmemError) as err:
        build_verifier(Task(id="t7", prompt="q", verifier=spec))
    message = str(err.value)
    assert problem in message and repr(spec) in message and "task t7" in message
    assert all(kind in message for kind in verifier_kinds())


def test_safe_feedback_falls_back_until_nothing_leaks() -> None:
    assert safe_feedback(["'42 apples' is wrong"], ["42"]) == "that is not the correct answer"
    assert safe_feedback(["the answer is empty"], ["no"]) == "the answer is empty"  # "no" only as a word
    assert leaks("I say no.", "no") and not leaks("not now", "no") and leaks("x=4.5", "4")
