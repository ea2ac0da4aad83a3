"""Benchmark the MiniLM embedder's two engines: llama.cpp (:class:`LlamaCppEmbedder`) against sentence-transformers
(:class:`MiniLMEmbedder`), in one process so that the ratios compare like with like.

- cold start: a fresh ``python -I`` process that imports ``procmem.memory``, builds ``default_embedder()`` on one
  engine (``$PROCMEM_EMBEDDER``) and embeds one question; its CPU seconds (user + system) and wall seconds;
- one question: ``--queries`` distinct questions embedded one call each (no cache hits: what a retrieval pays),
  wall and CPU p50 / p95 in ms, and old / new ratios;
- a batch: ``--batch`` distinct texts in one call (what recording episodes pays), texts per second;
- parity: the lowest cosine between the two engines' vectors over all of those texts.

Target (issue 14): the agent's whole retrieval p95 < 20 ms, of which embedding the question is most.

    .venv/bin/python eval/bench/bench_embed.py [--queries 200] [--batch 256] [--cold-runs 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

_COLD = ("from procmem.memory import default_embedder\n"
         "default_embedder().embed(['What is 3 + 4? Answer with the number only.'])\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    from procmem.memory.embedding import LlamaCppEmbedder, MiniLMEmbedder

    results: dict[str, Any] = {"loadavg": _loadavg()}
    for engine in ("llama.cpp", "sentence-transformers"):
        results[f"cold_{engine}_cpu_s"], results[f"cold_{engine}_wall_s"] = _cold_start(engine, args.cold_runs)
    questions = [f"Question {i}: what is {i * 7 % 97} + {i * 13 % 89}? Reply with the number only." for i in
                 range(args.queries)]
    batch = [f"Episode {i}: the task asked for {i} * {i + 3} modulo 7; the answer {i % 7} passed." for i in
             range(args.batch)]
    vectors: dict[str, np.ndarray] = {}
    for label, embedder in (("llama.cpp", LlamaCppEmbedder()), ("sentence-transformers", MiniLMEmbedder())):
        embedder.embed_array(["warm up"])
        wall: list[float] = []
        cpu: list[float] = []
        rows: list[np.ndarray] = []
        for question in questions:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            rows.append(embedder.embed_array([question])[0])
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
        start = time.perf_counter()
        batched = embedder.embed_array(batch)
        results[f"{label}_batch_texts_per_s"] = round(len(batch) / (time.perf_counter() - start), 1)
        results.update({f"{label}_p50_ms": _ms(wall, 50), f"{label}_p95_ms": _ms(wall, 95),
                        f"{label}_cpu_p50_ms": _ms(cpu, 50), f"{label}_cpu_p95_ms": _ms(cpu, 95)})
        vectors[label] = np.vstack([np.stack(rows), batched])
    old, new = "sentence-transformers", "llama.cpp"
    for key in ("p50_ms", "p95_ms", "cpu_p50_ms", "cpu_p95_ms"):
        results[f"ratio_{key}_old_over_new"] = round(results[f"{old}_{key}"] / max(results[f"{new}_{key}"], 1e-6), 2)
    results["ratio_cold_cpu_old_over_new"] = round(results[f"cold_{old}_cpu_s"] / results[f"cold_{new}_cpu_s"], 2)
    results["min_cosine"] = round(float((vectors[old] * vectors[new]).sum(axis=1).min()), 6)
    results["loadavg_after"] = _loadavg()
    print(json.dumps(results, indent=None if args.json else 2))
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200, help="distinct questions embedded one call each")
    parser.add_argument("--batch", type=int, default=256, help="distinct texts embedded in one call")
    parser.add_argument("--cold-runs", type=int, default=1, help="fresh processes per engine (the median is kept)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
    return parser.parse_args(argv)


def _cold_start(engine: str, runs: int) -> tuple[float, float]:
    """Median CPU and wall seconds of a fresh process that loads ``engine`` and embeds one question."""
    env = {**os.environ, "PROCMEM_EMBEDDER": engine}
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(max(1, runs)):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", _COLD], env=env, check=True)
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return round(float(np.median(cpu)), 2), round(float(np.median(wall)), 2)


def _ms(times: list[float], pct: int) -> float:
    return round(float(np.percentile(times, pct)) * 1000, 3)


def _loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


if __name__ == "__main__":
    main()
