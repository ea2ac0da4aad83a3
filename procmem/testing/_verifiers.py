"""The Verifier conformance suite: every verifier kind must pass all of it.

A :class:`VerifierCase` is a task with answers known to be right, answers known to be wrong, and the
secrets (the gold answer in its written forms) that feedback must never reveal. The suite then checks, for
the right and wrong answers and for :attr:`VerifierConformance.JUNK`:

- ``build_verifier`` gives a :class:`~procmem.verifiers.Verifier` and ``verify`` never raises;
- right answers pass with score 1.0; wrong answers fail; a pass always has score 1.0;
- scores lie in [0, 1]; a failure has non-empty, one-line feedback;
- feedback never contains a secret (the agent shows it to the model on a retry);
- judgements (passed, score, feedback) are deterministic: the same verifier twice, a verifier rebuilt
  from the task after a JSON round trip (how episodes are stored), and a verifier used from a worker
  thread (how the agent runs) all agree. ``details`` may differ (e.g. elapsed time).

Use it by subclassing :class:`VerifierConformance` in a ``test_*.py`` file and providing a
``verifier_case`` fixture (parametrise it to check several cases)::

    import pytest
    from procmem.core import Task
    from procmem.testing import VerifierCase, VerifierConformance

    class TestMyKind(VerifierConformance):
        @pytest.fixture
        def verifier_case(self):
            return VerifierCase("mine", Task(id="t", prompt="...", verifier="mine:..."),
                                right=("..",), wrong=("..",), secrets=("..",))

The verifier kind must be registered (``procmem.verifiers.register_verifier``) before the suite runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

from procmem.core import Task, Verdict
from procmem.verifiers import Verifier, build_verifier

__all__ = ["VerifierCase", "VerifierConformance"]


@dataclass(frozen=True)
class VerifierCase:
    """A task, answers known to be right and wrong, and the gold's written forms no feedback may show."""

    name: str
    task: Task
    right: Sequence[str]
    wrong: Sequence[str]
    secrets: Sequence[str]


def _reveals(feedback: str, secret: str) -> bool:
    """Whether ``secret`` can be read in ``feedback``: as a substring, or as a whole word when it is a short
    alphabetic word (``no`` is inside ``not``, which reveals nothing)."""
    text, needle = feedback.casefold(), secret.strip().casefold()
    if not needle:
        return False
    if len(needle) < 3 and needle.isalpha():
        return re.search(rf"\b{re.escape(needle)}\b", text) is not None
    return needle in text


def _judgement(verdict: Verdict) -> tuple[bool, float, str]:
    """What must be deterministic. ``details`` may hold measurements such as elapsed time."""
    return verdict.passed, verdict.score, verdict.feedback


def _verify(case: VerifierCase, verifier: Verifier, answer: str) -> Verdict:
    try:
        verdict = verifier.verify(answer)
    except Exception as err:  # the assertion message is the point
        raise AssertionError(f"{case.name}: verify({answer[:40]!r}) raised {err!r}") from err
    assert isinstance(verdict, Verdict), f"{case.name}: verify returned {type(verdict).__name__}"
    return verdict


class VerifierConformance:
    """Behaviour every verifier kind must show. Subclasses provide the ``verifier_case`` fixture."""

    JUNK: ClassVar[tuple[str, ...]] = (
        "",
        "   ",
        "\n\t",
        "seventeen",
        "None",
        "null",
        "{}",
        "[1, 2",
        "NaN",
        "-inf",
        "1e999999",
        "0/0",
        "-",
        "$$",
        "\\frac{",
        "(((((",
        "😀 ∑ Ω ç",
        "\x00\x01",
        "a" * 100_000,
        "9" * 5_000,
        "1 " * 3_000,
    )
    """Answers no verifier may crash on: empty, whitespace, words, broken syntax, control bytes, huge."""

    def _answers(self, case: VerifierCase) -> list[str]:
        return [*case.right, *case.wrong, *self.JUNK]

    def test_the_task_builds_a_verifier(self, verifier_case: VerifierCase) -> None:
        verifier = build_verifier(verifier_case.task)
        assert isinstance(verifier, Verifier), f"{verifier_case.name}: {type(verifier).__name__} is not a Verifier"

    def test_right_answers_pass_with_score_one_and_wrong_ones_fail(self, verifier_case: VerifierCase) -> None:
        case, verifier = verifier_case, build_verifier(verifier_case.task)
        for answer in case.right:
            verdict = _verify(case, verifier, answer)
            assert verdict.passed and verdict.score == 1.0, f"{case.name}: right answer {answer!r} got {verdict}"
        for answer in case.wrong:
            assert not _verify(case, verifier, answer).passed, f"{case.name}: wrong answer {answer!r} passed"

    def test_every_verdict_is_well_formed_and_reveals_no_secret(self, verifier_case: VerifierCase) -> None:
        case, verifier = verifier_case, build_verifier(verifier_case.task)
        for answer in self._answers(case):
            verdict, shown = _verify(case, verifier, answer), answer[:40]
            assert 0.0 <= verdict.score <= 1.0, f"{case.name}: score {verdict.score} for {shown!r}"
            if verdict.passed:
                assert verdict.score == 1.0, f"{case.name}: {shown!r} passed with score {verdict.score}"
                continue
            assert verdict.feedback.strip(), f"{case.name}: no feedback for failed answer {shown!r}"
            assert verdict.feedback.isprintable(), (
                f"{case.name}: feedback is not one printable line: {verdict.feedback!r}")
            for secret in case.secrets:
                assert not _reveals(verdict.feedback, secret), (
                    f"{case.name}: feedback for {shown!r} reveals the gold {secret!r}: {verdict.feedback!r}")
                for value in verdict.details.values():
                    assert not _reveals(json.dumps(value), secret), f"{case.name}: details reveal the gold {secret!r}"

    def test_judgements_are_deterministic_after_a_rebuild_and_off_the_main_thread(
        self, verifier_case: VerifierCase
    ) -> None:
        case, verifier = verifier_case, build_verifier(verifier_case.task)
        answers = self._answers(case)
        judged = {answer: _judgement(_verify(case, verifier, answer)) for answer in answers}
        again = {answer: _judgement(verifier.verify(answer)) for answer in answers}
        assert again == judged, f"{case.name}: the same verifier judged an answer differently twice"
        stored = Task.from_dict(json.loads(json.dumps(case.task.to_dict())))
        rebuilt = build_verifier(stored)
        assert {a: _judgement(rebuilt.verify(a)) for a in answers} == judged, (
            f"{case.name}: a rebuilt verifier disagrees")
        threaded = [*case.right, *case.wrong, *self.JUNK[:4]]
        with ThreadPoolExecutor(max_workers=2) as pool:
            off_main = list(pool.map(lambda a: _judgement(build_verifier(case.task).verify(a)), threaded))
        assert off_main == [judged[a] for a in threaded], f"{case.name}: a worker thread judged differently"
