"""Benchmark the code sandbox: verifications per second with the minimal root against without it.

Verifies the reference solution of every task in the built-in code suite (``builtin:code``; references
from ``tests/verifiers/hostile/code_reference_solutions.json`` when present, else a wrong stub answer),
``--rounds`` times over, in two variants measured side by side in this one process:

- ``host_fs``: the sandbox before minimal roots (the worker sees the host's files read-only, with
  procmem's own hidden), i.e. :meth:`IsolationSupport.without_root`;
- ``minimal_root``: the worker in its own root holding only the interpreter (the default).

Both run serially (one verification at a time, the variants alternating job by job so that a change
in the machine's load hits both alike) and with a thread pool of ``--workers`` threads (how the agent
runs verifiers; the variants alternating pass by pass). It reports verifications/s of each, the ratio
``minimal_root / host_fs`` against the target (at least 0.8, i.e. at most 20% slower), the median wall
time of one verification, the load average, and checks that every pass gave the same verdicts.

    .venv/bin/python eval/bench/bench_sandbox.py [--rounds 2] [--workers 8] [--mode auto|strong|weak]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from procmem.core import Task
from procmem.core.machine import load_average
from procmem.tasks import load_suite
from procmem.verifiers.code import CodeSpec, CodeVerifier
from procmem.verifiers.sandbox import isolation_support

__all__ = ["main"]

_REFERENCES = Path(__file__).resolve().parents[2] / "tests" / "verifiers" / "hostile" / "code_reference_solutions.json"
_TARGET = 0.8  # the minimal root may cost at most 20% of the verification rate


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    tasks = [*load_suite("builtin:code", split="train"), *load_suite("builtin:code", split="test")]
    references = json.loads(_REFERENCES.read_text()) if _REFERENCES.is_file() else {}
    suite = [(task, _answer(task, references)) for task in tasks]
    support = isolation_support(args.mode)
    variants = {"host_fs": support.without_root(), "minimal_root": support}
    if support.root is None:  # nothing to compare: the machine cannot build a minimal root
        variants = {"host_fs": support}

    def run(name: str, job: tuple[Task, str]) -> tuple[bool, float]:
        started = time.perf_counter()
        verdict = CodeVerifier(CodeSpec.from_task(job[0]), support=variants[name]).verify(job[1])
        return verdict.passed, time.perf_counter() - started

    for name in variants:
        run(name, suite[0])  # warm-up: imports and file caches
    serial: dict[str, list[tuple[bool, float]]] = {name: [] for name in variants}
    for i, job in enumerate(suite * args.rounds):
        for name in _order(list(variants), i):
            serial[name].append(run(name, job))
    parallel_s = dict.fromkeys(variants, 0.0)
    parallel: dict[str, list[bool]] = {name: [] for name in variants}
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for r in range(args.rounds):
            for name in _order(list(variants), r):
                started = time.perf_counter()
                outcomes = list(pool.map(lambda job, n=name: run(n, job), suite))
                parallel_s[name] += time.perf_counter() - started
                parallel[name] += [passed for passed, _ in outcomes]
    count = len(suite) * args.rounds
    serial_rate = {n: round(count / sum(t for _, t in serial[n]), 2) for n in variants}
    parallel_rate = {n: round(count / parallel_s[n], 2) for n in variants}
    verdicts = [[p for p, _ in serial[n]] for n in variants] + [parallel[n] for n in variants]
    results: dict[str, Any] = {
        "verifications": count, "workers": args.workers, "cpus": os.cpu_count(),
        "load_average_1m": load_average(), "isolation": support.level,
        "namespaces": ",".join(support.namespaces) or "none", "variants": list(variants),
        "serial_per_s": serial_rate, "parallel_per_s": parallel_rate,
        "median_serial_ms": {n: round(1000 * statistics.median(t for _, t in serial[n]), 1) for n in variants},
        "passed": {n: sum(p for p, _ in serial[n]) for n in variants},
        "same_verdicts": all(v == verdicts[0] for v in verdicts),
    }
    if "minimal_root" in variants:
        ratios = {kind: round(rates["minimal_root"] / rates["host_fs"], 3)
                  for kind, rates in (("serial", serial_rate), ("parallel", parallel_rate))}
        results.update(ratio=ratios, target=f"minimal_root / host_fs >= {_TARGET}",
                       within_target=all(r >= _TARGET for r in ratios.values()))
    else:
        results["note"] = f"no minimal root on this machine ({support.describe()}): only host_fs measured"
    print(json.dumps(results))
    return results


def _order(names: list[str], i: int) -> list[str]:
    """``names`` forwards on even ``i``, backwards on odd: neither variant always runs first."""
    return names if i % 2 == 0 else names[::-1]


def _answer(task: Task, references: dict[str, str]) -> str:
    if task.id in references:
        return f"```python\n{references[task.id]}```"
    return f"def {CodeSpec.from_task(task).entry_point}(*args):\n    return None\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="How many times to verify the whole suite, per variant.")
    parser.add_argument("--workers", type=int, default=8, help="Threads in the parallel passes.")
    parser.add_argument("--mode", default=None, help="Sandbox policy: auto, strong or weak (default: env).")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
