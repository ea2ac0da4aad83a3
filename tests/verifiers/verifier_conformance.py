"""The Verifier conformance suite: every verifier kind must pass :func:`check_verifier`.

A :class:`VerifierCase` is a task with answers known to be right, answers known to be wrong, and the
secrets (the gold answer in its written forms) that feedback must never reveal. ``check_verifier`` then
asserts, for the right and wrong answers and for :data:`JUNK`:

- ``build_verifier`` gives a :class:`~procmem.verifiers.Verifier` and ``verify`` never raises;
- right answers pass with score 1.0; wrong answers fail; a pass always has score 1.0;
- scores lie in [0, 1]; a failure has non-empty, one-line feedback;
- feedback never contains a secret (the agent shows it to the model on a retry);
- judgements (passed, score, feedback) are deterministic: the same verifier twice, a verifier rebuilt
  from the task after a JSON round trip (how episodes are stored), and a verifier used from a worker
  thread (how the agent runs) all agree. ``details`` may differ (e.g. elapsed time).

Use it from a ``test_verifiers_*.py`` file::

    from verifier_conformance import VerifierCase, check_verifier

    def test_my_kind_conforms():
        check_verifier(VerifierCase("mine", Task(id="t", prompt="...", verifier="mine:..."),
                                    right=("..",), wrong=("..",), secrets=("..",)))

:func:`builtin_cases` holds cases for every built-in kind, the code verifier's included when it is
installed; a new kind adds its case there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from procmem.core import Task, Verdict
from procmem.tasks import load_suite
from procmem.verifiers import RGVerifier, Verifier, build_verifier, verifier_kinds

__all__ = ["JUNK", "VerifierCase", "builtin_cases", "check_verifier", "reveals"]

JUNK: tuple[str, ...] = (
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


@dataclass(frozen=True)
class VerifierCase:
    name: str
    task: Task
    right: Sequence[str]
    wrong: Sequence[str]
    secrets: Sequence[str]


def reveals(feedback: str, secret: str) -> bool:
    """Whether ``secret`` can be read in ``feedback``: as a substring, or as a whole word when it is a short
    alphabetic word (``no`` is inside ``not``, which reveals nothing)."""
    text, needle = feedback.casefold(), secret.strip().casefold()
    if not needle:
        return False
    if len(needle) < 3 and needle.isalpha():
        return re.search(rf"\b{re.escape(needle)}\b", text) is not None
    return needle in text


def check_verifier(case: VerifierCase) -> None:
    """Assert every conformance property for ``case`` (see the module docstring)."""
    verifier = build_verifier(case.task)
    assert isinstance(verifier, Verifier), f"{case.name}: {type(verifier).__name__} is not a Verifier"
    answers = [*case.right, *case.wrong, *JUNK]
    verdicts = {answer: _verify(case, verifier, answer) for answer in answers}

    for answer in case.right:
        verdict = verdicts[answer]
        assert verdict.passed and verdict.score == 1.0, f"{case.name}: right answer {answer!r} got {verdict}"
    for answer in case.wrong:
        assert not verdicts[answer].passed, f"{case.name}: wrong answer {answer!r} passed"
    for answer, verdict in verdicts.items():
        _check_verdict(case, answer, verdict)

    judged = {answer: _judgement(verdict) for answer, verdict in verdicts.items()}
    again = {answer: _judgement(verifier.verify(answer)) for answer in answers}
    assert again == judged, f"{case.name}: the same verifier judged an answer differently twice"
    stored = Task.from_dict(json.loads(json.dumps(case.task.to_dict())))
    rebuilt = build_verifier(stored)
    assert {a: _judgement(rebuilt.verify(a)) for a in answers} == judged, f"{case.name}: a rebuilt verifier disagrees"
    threaded = [*case.right, *case.wrong, *JUNK[:4]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        off_main = list(pool.map(lambda a: _judgement(build_verifier(case.task).verify(a)), threaded))
    assert off_main == [judged[a] for a in threaded], f"{case.name}: a worker thread judged differently"


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


def _check_verdict(case: VerifierCase, answer: str, verdict: Verdict) -> None:
    shown = answer[:40]
    assert 0.0 <= verdict.score <= 1.0, f"{case.name}: score {verdict.score} for {shown!r}"
    if verdict.passed:
        assert verdict.score == 1.0, f"{case.name}: {shown!r} passed with score {verdict.score}"
        return
    assert verdict.feedback.strip(), f"{case.name}: no feedback for failed answer {shown!r}"
    assert verdict.feedback.isprintable(), f"{case.name}: feedback is not one printable line: {verdict.feedback!r}"
    for secret in case.secrets:
        assert not reveals(verdict.feedback, secret), (
            f"{case.name}: feedback for {shown!r} reveals the gold {secret!r}: {verdict.feedback!r}")
    for value in verdict.details.values():
        for secret in case.secrets:
            assert not reveals(json.dumps(value), secret), f"{case.name}: details reveal the gold {secret!r}"


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
        *_rg_cases(),
        *_code_cases(),
    ]
