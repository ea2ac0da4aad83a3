"""The sandboxed code verifier: spec ``code`` or ``code:<entry_point>``.

The answer is a Python program (model output, untrusted); the verifier runs it against the task's tests
in the sandbox of :mod:`procmem.verifiers.sandbox`.

**Task shape** (one JSONL line; ``procmem solve --suite FILE`` and ``procmem verify`` read it)::

    {"id": "add", "split": "train", "verifier": "code:add",
     "prompt": "Write add(a, b) ...\\n\\ndef add(a: int, b: int) -> int:\\n    \\"\\"\\"Return a + b.\\"\\"\\"",
     "metadata": {
        "entry_point": "add",                      # needed unless the spec names it
        "tests": ["assert add(1, 2) == 3"],        # assert snippets (any test code), and/or
        "io": [[[1, 2], 3], [[-1, 1], 0]],         # [positional arguments, expected value] pairs
        "setup": "import math",                    # optional test-side code run once before the tests
        "stub": "def add(a, b):\\n    ...",        # optional: completes a body-only answer
        "timeout_s": 5, "memory_mb": 512,          # optional limits of the whole run
        "show_tests": false}}                      # optional: feedback quotes the failing test's code

**How tests judge.** The candidate program runs in an untrusted worker process; the tests run in the
trusted supervisor, where the entry point is a proxy: each call ships its arguments to the worker and
gets back a plain value (None, bool, int, float, complex, str, bytes, list, tuple, dict, set,
frozenset), built afresh from data. So exiting early, overriding ``assert`` or builtins, returning an
object whose ``__eq__`` always says True, or patching procmem's modules cannot make a test pass, and
the expected values never enter the candidate's process. Input/output pairs compare with tuples equal
to lists and floats within 1e-9. Arguments are passed by value: a test cannot observe in-place
mutation.

**Answers.** A fenced ```python block, or a bare program (prose before or after it is dropped in the
sandbox when the whole text does not parse); with a ``stub``, a body-only answer is appended to the
stub.

**Verdict.** ``passed`` when every test passed; ``score`` is the fraction passed. ``feedback`` names
the first failing test (its call and what it returned or raised, never the expected value unless
``show_tests``), a load error, or "timed out after Xs". ``details`` records the isolation level
(``strong``/``partial``/``weak``) and how it was achieved, and the test counts; feedback also says so
when isolation is below ``strong``.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from procmem.core import ProcmemError, Task, Verdict
from procmem.verifiers.base import register_verifier
from procmem.verifiers.sandbox import IsolationSupport, Job, JobTest, SandboxLimits, SandboxRun, run_sandboxed

__all__ = ["CodeSpec", "CodeVerifier", "extract_code"]

MAX_PROGRAM_CHARS = 64_000
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_CODE_START = re.compile(r"^(?:async[ \t]+def|def|class|import|from|@)\b", re.M)
_PY_TAGS = ("", "python", "python3", "py", "py3")


@dataclass(frozen=True)
class CodeSpec:
    """A code task's tests and limits, checked when the verifier is built."""

    entry_point: str
    tests: tuple[JobTest, ...]
    test_texts: tuple[str, ...]
    setup: str = ""
    stub: str = ""
    show_tests: bool = False
    limits: SandboxLimits = field(default_factory=SandboxLimits)

    @classmethod
    def from_task(cls, task: Task, argument: str | None = None) -> CodeSpec:
        """Read ``task``; ``argument`` is the spec after ``code:`` (default: taken from ``task.verifier``)."""
        meta = task.metadata
        where = f"task {task.id}"
        if argument is None:
            argument = task.verifier.partition(":")[2]
        entry = (argument.strip() or str(meta.get("entry_point", ""))).strip()
        if not entry.isidentifier() or keyword.iskeyword(entry):
            raise ProcmemError(f"code task has no valid entry point ({entry!r})", where=where,
                               fix="give the function name as 'code:<name>' or metadata.entry_point")
        tests, texts = _asserts(meta.get("tests", []), where)
        more, more_texts = _io_pairs(meta.get("io", []), entry, where)
        if not tests + more:
            raise ProcmemError("code task has no tests", where=where,
                               fix="add metadata.tests (assert snippets) or metadata.io ([args, expected] pairs)")
        return cls(entry_point=entry, tests=tuple(tests + more), test_texts=tuple(texts + more_texts),
                   setup=_text(meta, "setup", where), stub=_text(meta, "stub", where),
                   show_tests=bool(meta.get("show_tests", False)), limits=_limits(meta, where))


def _text(meta: Mapping[str, Any], key: str, where: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise ProcmemError(f"metadata.{key} must be a string", where=where, fix=f"write metadata.{key} as code text")
    if key == "setup" and value:
        _compiles(value, f"metadata.{key}", where)
    return value


def _asserts(raw: Any, where: str) -> tuple[list[JobTest], list[str]]:
    if not isinstance(raw, list) or not all(isinstance(t, str) and t.strip() for t in raw):
        raise ProcmemError("metadata.tests must be a list of code strings", where=where,
                           fix='write tests like ["assert f(1) == 2", ...]')
    for i, text in enumerate(raw):
        _compiles(text, f"metadata.tests[{i}]", where)
    return [JobTest(code=t) for t in raw], list(raw)


def _compiles(text: str, name: str, where: str) -> None:
    try:
        compile(text, name, "exec")
    except (SyntaxError, ValueError) as err:
        raise ProcmemError(f"{name} is not valid Python: {err}", where=where, fix="fix the test code") from err


def _io_pairs(raw: Any, entry: str, where: str) -> tuple[list[JobTest], list[str]]:
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], list)
                                            for p in raw):
        raise ProcmemError("metadata.io must be a list of [arguments, expected] pairs", where=where,
                           fix="write pairs like [[[1, 2], 3], ...], the arguments as a list")
    texts = [f"{entry}({', '.join(map(repr, args))}) == {expected!r}" for args, expected in raw]
    return [JobTest(args=args, expected=expected) for args, expected in raw], texts


def _limits(meta: Mapping[str, Any], where: str) -> SandboxLimits:
    try:
        timeout = float(meta.get("timeout_s", 5.0))
        memory = int(meta.get("memory_mb", 512))
        if not (0 < timeout <= 60 and math.isfinite(timeout)) or not 64 <= memory <= 4096:
            raise ValueError
        return SandboxLimits(timeout_s=timeout, memory_mb=memory)
    except (TypeError, ValueError) as err:
        raise ProcmemError("metadata.timeout_s must be in (0, 60] and metadata.memory_mb in [64, 4096]",
                           where=where, fix="use e.g. timeout_s 5 and memory_mb 512") from err


def extract_code(answer: str, *, entry_point: str = "", stub: str = "") -> str | None:
    """The program in a model's answer, or None when there is none.

    A fenced block tagged python (or untagged) wins, preferring one that defines ``entry_point``; else
    the whole text when a line starts with ``def``/``class``/``import``/``from``/``@`` (the sandbox drops
    prose before and after the code when the text does not parse as a whole); else, given a ``stub``,
    the answer as the stub's body. The answer is never parsed here, only in the sandbox.
    """
    text = answer.replace("\r\n", "\n").strip("\n")
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PY_TAGS and body.strip()]
    if blocks:
        defining = [b for b in blocks if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\b", b)]
        return (defining or blocks)[0].rstrip() + "\n"
    start = _CODE_START.search(text)
    if start is not None and (not entry_point or f"def {entry_point}" in text or not stub):
        return text.rstrip() + "\n"  # prose around the code is cut in the sandbox, where it is parsed
    if stub and text.strip():
        return stub.rstrip("\n") + "\n" + _as_body(text) + "\n"
    return None


def _as_body(text: str) -> str:
    lines = text.split("\n")
    rest = [ln for ln in lines[1:] if ln.strip()]
    if not lines[0][:1].isspace() and rest and all(ln[:1].isspace() for ln in rest):
        return "    " + lines[0] + "\n" + "\n".join(lines[1:])  # only the first line lost its indentation
    if lines[0][:1].isspace():
        return text
    return "\n".join("    " + ln if ln.strip() else ln for ln in lines)


class CodeVerifier:
    """Runs an answer's program against a :class:`CodeSpec` in the sandbox."""

    def __init__(self, spec: CodeSpec, *, mode: str | None = None, support: IsolationSupport | None = None,
                 hide: Sequence[str] | None = None, tmp_root: str | None = None) -> None:
        """``mode`` picks the sandbox policy (see :func:`~procmem.verifiers.sandbox.isolation_support`),
        or ``support`` gives the isolation itself; ``hide`` and ``tmp_root`` go to the sandbox."""
        self.spec = spec
        self._mode, self._support, self._hide, self._tmp_root = mode, support, hide, tmp_root

    def verify(self, answer: str) -> Verdict:
        return self.run(answer)[0]

    def run(self, answer: str) -> tuple[Verdict, SandboxRun | None]:
        """The verdict, and the sandbox run behind it (None when nothing ran)."""
        spec = self.spec
        total = len(spec.tests)
        code = extract_code(answer, entry_point=spec.entry_point, stub=spec.stub)
        if code is None:
            return _fail(f"no Python code found: answer with a ```python block or `def {spec.entry_point}(...):`",
                         total), None
        if len(code) > MAX_PROGRAM_CHARS:
            return _fail(f"the program is longer than {MAX_PROGRAM_CHARS} characters", total), None
        job = Job(code=code, entry_point=spec.entry_point, tests=list(spec.tests), setup=spec.setup)
        try:
            run = run_sandboxed(job, spec.limits, mode=self._mode, support=self._support, hide=self._hide,
                                tmp_root=self._tmp_root)
        except OSError as err:
            return _fail(f"the sandbox could not start: {err}", total, sandbox_error=str(err)), None
        return self._judge(run), run

    def _judge(self, run: SandboxRun) -> Verdict:
        spec = self.spec
        total = len(spec.tests)
        results = {e["i"]: e for e in run.events if e.get("ev") == "result" and isinstance(e.get("i"), int)}
        passed = sum(1 for i in range(total) if results.get(i, {}).get("ok") is True)
        done = run.done
        complete = (done is not None and done.get("total") == total and done.get("passed") == passed == total
                    and not run.timed_out and not run.output_exceeded)
        details: dict[str, Any] = {**run.isolation, "tests_total": total, "tests_passed": passed,
                                   "elapsed_s": round(run.elapsed_s, 3)}
        feedback = f"all {total} tests passed" if complete else self._failure(run, results, total)
        if done is None and not (run.timed_out or run.output_exceeded):
            details.setdefault("sandbox_error", feedback)
        if run.isolation.get("isolation") != "strong":
            feedback += f" [sandbox isolation: {run.isolation.get('isolation', 'unknown')}]"
        return Verdict(passed=complete, score=passed / total if total else 0.0, feedback=feedback, details=details)

    def _failure(self, run: SandboxRun, results: Mapping[int, Mapping[str, Any]], total: int) -> str:
        loaded = next((e for e in run.events if e.get("ev") == "loaded"), None)
        if run.output_exceeded:
            return f"the program printed more than {self.spec.limits.max_output_bytes} bytes of output and was stopped"
        if run.timed_out:
            return f"timed out after {self.spec.limits.timeout_s:g}s {self._where(run, loaded, total)}"
        if loaded is not None and not loaded.get("ok"):
            return str(loaded.get("error") or "the program failed while loading")
        failed = [i for i in range(total) if i in results and not results[i].get("ok")]
        if failed:
            first = failed[0]
            return f"{len(failed)} of {total} tests failed; {self._label(first)}: {results[first].get('msg', '')}"
        tail = run.scrub(" ".join(run.stderr.strip().splitlines()[-1:])[-200:])
        return f"the sandbox ended without reporting results (exit code {run.returncode})" + (
            f": {tail}" if tail else "")

    def _where(self, run: SandboxRun, loaded: Mapping[str, Any] | None, total: int) -> str:
        if loaded is None:
            return "while loading the program"
        index = run.running_test
        return f"in {self._label(index)} of {total}" if index is not None else "after the tests"

    def _label(self, index: int) -> str:
        if self.spec.show_tests:
            return f"test {index + 1} (`{self.spec.test_texts[index]}`)"
        return f"test {index + 1}"


def _fail(feedback: str, total: int, **extra: str) -> Verdict:
    return Verdict(passed=False, score=0.0, feedback=feedback, details={"tests_total": total, "tests_passed": 0,
                                                                         **extra})


@register_verifier("code")
def _build(argument: str, task: Task) -> CodeVerifier:
    return CodeVerifier(CodeSpec.from_task(task, argument))
