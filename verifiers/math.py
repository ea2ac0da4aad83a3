"""``math:<gold>``: the answer is mathematically equal to the gold, judged by math-verify.

The gold is LaTeX or a plain expression (``math:\\frac{1}{2}``, ``math:x^2+2x+1``, ``math:42``); an
answer such as ``0.5``, ``$(x+1)^2$`` or ``\\boxed{42}`` passes. Text without a ``$`` that math-verify
cannot read is retried wrapped in ``$...$``, so bare LaTeX works on both sides. As math-verify
requires, the gold is parsed and passed first.

**Time limits.** math-verify bounds parsing and comparison with ``signal.alarm``, which only works on a
process's main thread (elsewhere it raises ``ValueError``). On the main thread the check runs in
place with math-verify's own limits. Anywhere else (the agent verifies from worker threads) it runs in
a small pool of spawned worker processes, where it is again on a main thread, and the caller also waits
at most :data:`LIMIT_SECONDS`; a check that runs over fails with "took too long" and the pool is
replaced.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from procmem.core import Task, Verdict
from procmem.verifiers._feedback import fail, malformed_spec, show
from procmem.verifiers.base import register_verifier

__all__ = ["LIMIT_SECONDS", "MAX_ANSWER_CHARS", "MathVerifier", "judge", "shutdown_pool"]

LIMIT_SECONDS = 30.0
"""Most time a worker thread waits for one check (the pool's first start included)."""
MAX_ANSWER_CHARS = 1000
"""Longer answers fail without a check (math-verify can spend its whole timeout on them)."""

_MATH_VERIFY_TIMEOUT = 5
_SYNTAX = "math:<LaTeX or expression>, e.g. math:\\frac{1}{2}"

_EQUAL, _DIFFERENT, _UNREADABLE, _BAD_GOLD, _TIMEOUT, _ERROR = (
    "equal", "different", "unreadable", "bad-gold", "timeout", "error")

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def judge(gold: str, answer: str) -> str:
    """Compare in this thread; only call on a main thread (math-verify's timeouts need it).

    Returns one of ``equal``, ``different``, ``unreadable`` (no math in the answer), ``bad-gold`` or
    ``error``.
    """
    from math_verify import verify

    try:
        parsed_gold = _parse(gold)
        if not parsed_gold:
            return _BAD_GOLD
        if not answer.strip():
            return _UNREADABLE
        parsed = _parse(answer)
        if not parsed:
            return _UNREADABLE
        return _EQUAL if verify(parsed_gold, parsed, timeout_seconds=_MATH_VERIFY_TIMEOUT) else _DIFFERENT
    except Exception:
        return _ERROR


def _parse(text: str) -> list[Any]:
    from math_verify import parse

    found: list[Any] = parse(text, parsing_timeout=_MATH_VERIFY_TIMEOUT)
    if not found and "$" not in text:
        found = parse(f"${text}$", parsing_timeout=_MATH_VERIFY_TIMEOUT)
    return found


def _bounded_judge(gold: str, answer: str) -> str:
    """:func:`judge` here on the main thread, else in the worker pool with a wall-clock bound."""
    if threading.current_thread() is threading.main_thread():
        return judge(gold, answer)
    for _ in range(2):  # one retry when another thread's timeout replaced the pool under us
        pool = _get_pool()
        try:
            return pool.submit(judge, gold, answer).result(timeout=LIMIT_SECONDS)
        except FutureTimeout:
            _discard(pool)
            return _TIMEOUT
        except BrokenProcessPool:
            _discard(pool)
    return _ERROR


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: the caller is multi-threaded (agent workers, torch).
            _pool = ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1),
                                        mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown_pool() -> None:
    """Stop the worker processes, if any were started (they also stop at interpreter exit)."""
    with _pool_lock:
        pool = _pool
    if pool is not None:
        _discard(pool)


_readable_golds: set[str] = set()


def _gold_is_readable(gold: str) -> bool:
    """Whether math-verify reads ``gold`` (successes are remembered; a failure may be a timeout)."""
    if gold not in _readable_golds and _bounded_judge(gold, gold) == _EQUAL:
        _readable_golds.add(gold)
    return gold in _readable_golds


@dataclass(frozen=True)
class MathVerifier:
    gold: str

    def verify(self, answer: str) -> Verdict:
        got = answer.strip()
        if len(got) > MAX_ANSWER_CHARS:
            return fail([f"the answer is too long to check ({len(got)} characters); give just the final value",
                         "the answer is too long to check; give just the final value"], (self.gold,))
        outcome = _bounded_judge(self.gold, got) if got else _UNREADABLE
        if outcome == _EQUAL:
            return Verdict(passed=True, score=1.0)
        secrets = (self.gold,)
        if not got:
            return fail(["the answer is empty; expected a mathematical expression on one line"], secrets)
        messages = {
            _UNREADABLE: [f"could not read a mathematical expression in {show(got)}; give just the final value",
                          "could not read a mathematical expression; give just the final value"],
            _DIFFERENT: [f"{show(got)} is not equal to the correct value", "that is not equal to the correct value"],
            _TIMEOUT: [f"checking {show(got)} took too long; give a simpler final expression",
                       "checking the answer took too long; give a simpler final expression"],
        }
        default = [f"could not check {show(got)}; give just the final value", "could not check the answer"]
        return fail(messages.get(outcome, default), secrets)


@register_verifier("math")
def _build(argument: str, task: Task) -> MathVerifier:
    gold = argument.strip()
    if not gold:
        raise malformed_spec(task, "the gold answer is empty", _SYNTAX)
    if not _gold_is_readable(gold):
        raise malformed_spec(task, f"math-verify cannot read the gold answer {gold!r}", _SYNTAX)
    return MathVerifier(gold)
