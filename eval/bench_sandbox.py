"""Benchmark the code sandbox: verifications per second, serial against parallel.

Verifies the reference solution of every task in the built-in code suite (``builtin:code``; references
from ``tests/verifiers/hostile/code_reference_solutions.json`` when present, else a wrong stub answer),
``--rounds`` times over:

- serially, one verification at a time;
- with a thread pool of ``--workers`` threads (how the agent runs verifiers), each run in its own sandbox.

It reports verifications/s for both, the speed-up, the median wall time of one verification, the
isolation level used, and checks that both passes gave the same verdicts.

    .venv/bin/python eval/bench_sandbox.py [--rounds 2] [--workers 8] [--mode auto|strong|weak]
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
from procmem.tasks import load_suite
from procmem.verifiers.code import CodeSpec, CodeVerifier
from procmem.verifiers.sandbox import isolation_support

__all__ = ["main"]

_REFERENCES = Path(__file__).resolve().parents[1] / "tests" / "verifiers" / "hostile" / "code_reference_solutions.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    tasks = [*load_suite("builtin:code", split="train"), *load_suite("builtin:code", split="test")]
    references = json.loads(_REFERENCES.read_text()) if _REFERENCES.is_file() else {}
    jobs = [(task, _answer(task, references)) for task in tasks] * args.rounds
    support = isolation_support(args.mode)

    def run(job: tuple[Task, str]) -> tuple[bool, float]:
        started = time.perf_counter()
        verdict = CodeVerifier(CodeSpec.from_task(job[0]), mode=args.mode).verify(job[1])
        return verdict.passed, time.perf_counter() - started

    run(jobs[0])  # warm-up: probes and imports
    started = time.perf_counter()
    serial = [run(job) for job in jobs]
    serial_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        parallel = list(pool.map(run, jobs))
    parallel_s = time.perf_counter() - started
    results = {
        "verifications": len(jobs), "workers": args.workers, "cpus": os.cpu_count(),
        "isolation": support.level, "namespaces": ",".join(support.namespaces) or "none",
        "serial_per_s": round(len(jobs) / serial_s, 2), "parallel_per_s": round(len(jobs) / parallel_s, 2),
        "speedup": round(serial_s / parallel_s, 2),
        "median_serial_ms": round(1000 * statistics.median(t for _, t in serial), 1),
        "median_parallel_ms": round(1000 * statistics.median(t for _, t in parallel), 1),
        "passed": sum(p for p, _ in serial), "same_verdicts": [p for p, _ in serial] == [p for p, _ in parallel],
    }
    print(json.dumps(results))
    return results


def _answer(task: Task, references: dict[str, str]) -> str:
    if task.id in references:
        return f"```python\n{references[task.id]}```"
    return f"def {CodeSpec.from_task(task).entry_point}(*args):\n    return None\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="How many times to verify the whole suite.")
    parser.add_argument("--workers", type=int, default=8, help="Threads in the parallel pass.")
    parser.add_argument("--mode", default=None, help="Sandbox policy: auto, strong or weak (default: env).")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
