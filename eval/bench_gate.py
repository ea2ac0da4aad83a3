"""A/A test of the promotion gate: how often does it promote a model over itself?

The gate (``procmem.distill.gate.compare``) must not promote noise. Here both sides of every decision
are the SAME policy: the model answers ``--n`` items of a suite ``--runs`` times with sampled decoding
(``--temperature``, a different seed per run), and the gate decides between pairs of those runs.

- *pairs*: every ordered pair of distinct runs (``runs * (runs - 1)`` decisions);
- *resampled*: each item's pass rate over the runs is taken as the policy, and ``--trials`` pairs of
  runs are drawn from it (independent Bernoulli verdicts per item), many more decisions than pairs.

Each count is made with the gate's defaults (``GateConfig()``: McNemar's exact one-sided test at level
0.05 and ``min_improvement``) and, for comparison in the same process, with the tests off
(``level=1.0``: the point-estimate rule the gate used before). Target: at most 5% promotions.

It also prints the exact power of the default rule (probability of promoting) for a true gain with
some churn, at several numbers of pooled test items: the basis of the ``n_test`` default.

    .venv/bin/python eval/bench_gate.py [--model local:default] [--suite SPEC] [--n 90] [--runs 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from procmem.core.machine import load_average
from procmem.distill.config import GateConfig
from procmem.distill.gate import SuiteScores, compare

__all__ = ["a_a_rate", "main", "power"]

DEFAULT_SUITE = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
POWER_CASES = ((0.10, 0.0), (0.10, 0.05), (0.10, 0.10), (0.05, 0.05), (0.20, 0.05))
"""(true gain, churn): the candidate wins ``gain + churn`` of items and loses ``churn`` of them."""
POWER_SIZES = (40, 100, 200, 400)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    results: dict[str, Any] = {"load_avg_start": load_average(), "model": args.model, "suite": args.suite,
                               "n": args.n, "runs": args.runs, "temperature": args.temperature}
    start = time.perf_counter()
    runs = _sampled_runs(args)
    results["sampling_s"] = round(time.perf_counter() - start, 1)
    results["mean_accuracy"] = sum(sum(r) for r in runs) / (len(runs) * args.n)
    rates = [sum(run[i] for run in runs) / len(runs) for i in range(args.n)]
    results["items_never_passed"] = sum(r == 0 for r in rates)
    results["items_always_passed"] = sum(r == 1 for r in rates)
    for label, config in (("gate", GateConfig()), ("no_test", GateConfig(level=1.0))):
        pairs = [(a, b) for a in range(len(runs)) for b in range(len(runs)) if a != b]
        promoted = sum(_promotes(runs[a], runs[b], config) for a, b in pairs)
        results[f"{label}_pairs"] = {"decisions": len(pairs), "promotions": promoted,
                                     "rate": promoted / len(pairs) if pairs else 0.0}
        results[f"{label}_resampled"] = a_a_rate(rates, config, trials=args.trials, seed=args.seed)
    results["power"] = [{"gain": g, "churn": c, **{f"n={n}": round(power(n, g + c, c, GateConfig()), 3)
                                                   for n in args.power_sizes}} for g, c in POWER_CASES]
    results["load_avg_end"] = load_average()
    print(json.dumps(results, indent=2))
    return results


def a_a_rate(rates: Sequence[float], config: GateConfig, *, trials: int, seed: int = 0) -> dict[str, Any]:
    """Promotions of the gate between two independent runs of the policy with per-item pass ``rates``."""
    rng = random.Random(seed)
    promoted = 0
    for _ in range(trials):
        base = [rng.random() < r for r in rates]
        cand = [rng.random() < r for r in rates]
        promoted += _promotes(base, cand, config)
    return {"decisions": trials, "promotions": promoted, "rate": promoted / trials if trials else 0.0}


def power(n: int, win: float, loss: float, config: GateConfig) -> float:
    """Exact probability that the gate promotes on ``n`` paired items, each won with probability ``win``
    and lost with probability ``loss`` (no holdout)."""
    tie = 1.0 - win - loss
    total = 0.0
    for wins in range(n + 1):
        for losses in range(n + 1 - wins):
            chance = math.comb(n, wins) * math.comb(n - wins, losses) * win**wins * loss**losses \
                * tie**(n - wins - losses)
            if chance > 1e-12 and _promotes([False] * wins + [True] * losses, [True] * wins + [False] * losses,
                                            config, pad=n - wins - losses):
                total += chance
    return total


def _promotes(base: Sequence[bool], cand: Sequence[bool], config: GateConfig, pad: int = 0) -> bool:
    """The real gate decision between two per-item verdict lists (``pad`` extra items both fail)."""
    ids = tuple(f"i{i}" for i in range(len(base) + pad))
    baseline = {"t": SuiteScores(suite="t", task_ids=ids, passed=(*base, *[False] * pad))}
    candidate = {"t": SuiteScores(suite="t", task_ids=ids, passed=(*cand, *[False] * pad))}
    return compare(baseline, candidate, test_suites=["t"], holdout_suites=[], config=config,
                   baseline_name="a").passed


def _sampled_runs(args: argparse.Namespace) -> list[list[bool]]:
    from procmem.agent.scoring import score_tasks
    from procmem.core import GenerationConfig, Home
    from procmem.core.prompts import ANSWER_STOP
    from procmem.llm import load_llm
    from procmem.tasks.suites import load_suite

    tasks = load_suite(args.suite, split=args.split, n=args.n)
    if len(tasks) < args.n:
        raise SystemExit(f"{args.suite} has only {len(tasks)} {args.split} items; lower --n")
    models_dir = args.models_dir or os.environ.get("PROCMEM_MODELS_CACHE") or str(Home.resolve().models)
    llm = load_llm(args.model, models_dir=models_dir)
    runs = []
    for seed in range(args.runs):
        config = GenerationConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=1.0,
                                  stop=(ANSWER_STOP,), seed=1000 + seed)
        runs.append([item.passed for item in score_tasks(llm, {"s": tasks}, config)["s"]])
    return runs


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="local:default", help="Model spec (local:default, local:tiny, ...).")
    parser.add_argument("--models-dir", default=None, help="Converted-model cache ($PROCMEM_MODELS_CACHE).")
    parser.add_argument("--suite", default=DEFAULT_SUITE, help="Suite spec the model answers.")
    parser.add_argument("--split", default="train", help="Split to draw items from (an A/A test needs no test).")
    parser.add_argument("--n", type=int, default=90,
                        help="Items per run (the default suite has 99 distinct train questions).")
    parser.add_argument("--runs", type=int, default=8, help="Sampled runs of the same model.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature of the runs.")
    parser.add_argument("--max-tokens", type=int, default=32, help="Most new tokens per answer.")
    parser.add_argument("--trials", type=int, default=2000, help="Resampled A/A decisions.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the resampled decisions.")
    parser.add_argument("--power-sizes", type=lambda text: [int(n) for n in text.split(",") if n],
                        default=list(POWER_SIZES), help="Pooled test items to compute the power at (comma list).")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
