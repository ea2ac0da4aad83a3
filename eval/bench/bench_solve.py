"""Benchmark ``procmem solve`` end to end: the llama.cpp engine against ``--engine transformers``, in one run.

Runs, one after the other, each as a fresh ``procmem`` process in a fresh ``$PROCMEM_HOME`` (so memory starts
empty in both), with the bundled model already cached (``$PROCMEM_MODELS_CACHE``: nothing is converted in
the timed part):

- cold start: a fresh ``procmem solve`` process, from its start to the engine's first generated token (a probe
  wrapped around the real CLI notes the moment; ``--cold-runs`` times, the median reported), and the whole
  ``solve --n 1 --attempts 1`` process, and the CPU seconds the process had used by its first token (what a
  machine shared with other jobs does not inflate much); with memory (the default: the first prompt waits
  for the embedder, sentence-transformers, to load) and with ``--no-memory`` (the model path alone);
- ``procmem solve --suite SUITE --n 100 --concurrency 16`` with the default engine (llama.cpp when it is
  installed), then the same command with ``--engine transformers``: each one's wall time (the whole process)
  and the agent's own solve time, tokens/s and passes;
- the ratio ``solve_transformers_x_engine_wall`` (transformers wall time / engine wall time).

The workload is the agent's real use: its defaults (2 attempts with verifier feedback on retries, memory on
with k=3 entries in the prompt, greedy decoding, ``max_tokens`` 48, stop at a newline) on chain_sum with
1-2 digit operands. Targets: the ratio >= 2.5 (issue 11); cold start to the first token with memory < 2 s
(issue 26; it was 5 s in issue 11).

    .venv/bin/python eval/bench/bench_solve.py [--json] [--n 100] [--concurrency 16] [--suite SUITE] [--models-dir DIR]
        [--cold-runs 3] [--cold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procmem.core.machine import load_average

__all__ = ["main"]

SUITE = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=2"
_FIRST_TOKEN = "procmem-bench-first-token"
# The real CLI, with a probe that prints the wall-clock moment the engine produced its first token.
_PROBE = f"""
import resource, sys, time
from procmem.llm.llamacpp import LlamaCppLLM
advance = LlamaCppLLM._advance
seen = []
def _advance(self, request, token):
    if not seen:
        seen.append(1)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print("{_FIRST_TOKEN}", repr(time.time()), usage.ru_utime + usage.ru_stime, file=sys.stderr, flush=True)
    advance(self, request, token)
LlamaCppLLM._advance = _advance
sys.argv = ["procmem", *sys.argv[1:]]
from procmem.cli import main
main()
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    from procmem.llm import llama_cpp_available
    from procmem.llm.bundled import bundled_models_dir, ensure_bundled_gguf, ensure_bundled_model

    models = bundled_models_dir(Path(args.models_dir)).resolve()
    ensure_bundled_model(models)  # cached before anything is timed
    if llama_cpp_available():
        ensure_bundled_gguf(models)
    env = {**os.environ, "PROCMEM_MODELS_CACHE": str(models)}
    results: dict[str, Any] = {"suite": args.suite, "n": args.n, "concurrency": args.concurrency,
                               "cores": os.cpu_count(), "load_avg_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="procmem-bench-solve-") as scratch:
        if llama_cpp_available() and args.cold_runs > 0:
            _cold_start(Path(scratch), env, args, results)
            _cold_start(Path(scratch), env, args, results, memory=False)
        for engine in () if args.cold_only else ("auto", "transformers"):
            name = "engine" if engine == "auto" else "transformers"
            results[name] = _solve(Path(scratch) / name, env, args, engine)
            _log(f"{name}: {json.dumps(results[name])}")
    if "engine" in results and "transformers" in results:
        results["solve_transformers_x_engine_wall"] = round(results["transformers"]["wall_s"]
                                                            / results["engine"]["wall_s"], 2)
    results["load_avg_end"] = load_average()
    _log(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    return results


def _cold_start(scratch: Path, env: dict[str, str], args: argparse.Namespace, results: dict[str, Any], *,
                memory: bool = True) -> None:
    """Fresh ``procmem solve`` processes: seconds to the first generated token, and to the end of one task.
    With memory the first prompt waits for the embedder (sentence-transformers) to retrieve with."""
    firsts, cpus, wholes = [], [], []
    suffix = "" if memory else "_no_memory"
    for run in range(args.cold_runs):
        command = [sys.executable, "-c", _PROBE, "--home", str(scratch / f"cold{suffix}{run}"), "solve", "--suite",
                   args.suite, "--n", "1", "--attempts", "1", "--json", *([] if memory else ["--no-memory"])]
        start = time.time()
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        wholes.append(time.time() - start)
        if out.returncode != 0:
            raise SystemExit(f"cold start run failed ({out.returncode}): {out.stderr[-2000:]}")
        marks = [line.split()[1:] for line in out.stderr.splitlines() if line.startswith(_FIRST_TOKEN)]
        if not marks:
            raise SystemExit("cold start run generated no token on the llama.cpp engine")
        firsts.append(float(marks[0][0]) - start)
        cpus.append(float(marks[0][1]))
    results[f"cold_start_first_token{suffix}_s"] = round(statistics.median(firsts), 2)
    results[f"cold_start_first_token{suffix}_runs_s"] = [round(s, 2) for s in firsts]
    results[f"cold_start_first_token{suffix}_cpu_s"] = round(statistics.median(cpus), 2)  # the process's CPU time
    results[f"cold_start_solve_one_task{suffix}_process_s"] = round(statistics.median(wholes), 2)


def _solve(home: Path, env: dict[str, str], args: argparse.Namespace, engine: str) -> dict[str, Any]:
    """One ``procmem solve`` process on ``engine``: its wall time and the agent's report."""
    command = [sys.executable, "-m", "procmem.cli", "--home", str(home), "solve", "--suite", args.suite,
               "--n", str(args.n), "--concurrency", str(args.concurrency), "--engine", engine, "--json"]
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"procmem solve --engine {engine} failed ({out.returncode}): {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "solve_s": round(report["wall_time_s"], 1),
            "tokens_per_s": round(report["tokens_per_s"], 1), "passed": report["passed"], "n": report["n"],
            "load_avg_after": load_average()}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="tasks per solve run (default 100)")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks at once (default 16)")
    parser.add_argument("--suite", default=SUITE, help=f"task suite (default {SUITE})")
    parser.add_argument("--cold-runs", type=int, default=3,
                        help="fresh processes timed for the cold start (0: skip it)")
    parser.add_argument("--cold-only", action="store_true", help="measure the cold start only (no solve runs)")
    parser.add_argument("--models-dir", default=str(Path.home() / ".procmem" / "models"),
                        help="where the bundled model is cached ($PROCMEM_MODELS_CACHE wins)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line last")
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
