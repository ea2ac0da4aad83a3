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

    .venv/bin/python eval/bench/bench_gate.py [--model local:default] [--suite SPEC] [--n 90] [--runs 8]

**Retrains** (``--retrains K --out DIR``): the gate's own remaining noise is that of training, so here both
sides of every decision are LoRA adapters trained on exactly the same data with the same budget, differing
only in the training seed (LoRA init, data order, dropout). One fixed training set is built from the
reference answers of the train items of ``--config``'s suites (eval/configs/pmd.toml: the experiment's
suites and its budget, 192 examples = 12 optimizer steps of 16, lr 3e-4, sft), rendered as completions
(the same ``Trace`` RFT trains on). K adapters are trained on it (train seeds ``seed + 0 .. K-1``), each
is scored greedily and memory-free on the same held-out test items with the gate's scoring path
(``procmem.distill.gate.evaluate``), and the gate decides every ordered pair: ``K * (K - 1)`` decisions,
with the old point-estimate rule (``level=1.0``) beside it. Pairs share adapters, so those decisions are
not independent; the rate over the ``K // 2`` disjoint pairs (0 vs 1, 2 vs 3, ...) is reported too, each
with its exact (Clopper-Pearson) 95% interval, and a sweep of stricter ``level`` / ``min_improvement``
settings over the same pairs. Every adapter and score file is cached under ``--out``, so
a rerun resumes.

    nice -n 10 .venv/bin/python eval/bench/bench_gate.py --retrains 6 --out /work/runs/gate-aa [--test-n 34]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procmem.core.machine import load_average
from procmem.distill.config import GateConfig
from procmem.distill.gate import SuiteScores, compare

if TYPE_CHECKING:
    from procmem.core import Task
    from procmem.distill.traces import TraceBuild

__all__ = ["a_a_rate", "clopper_pearson", "main", "power", "reference_build", "retrain_a_a"]

DEFAULT_SUITE = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
POWER_CASES = ((0.10, 0.0), (0.10, 0.05), (0.10, 0.10), (0.05, 0.05), (0.20, 0.05))
"""(true gain, churn): the candidate wins ``gain + churn`` of items and loses ``churn`` of them."""
POWER_SIZES = (40, 100, 200, 400)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pmd.toml"
_RULES = (("gate", GateConfig()), ("no_test", GateConfig(level=1.0)))
SWEEP_LEVELS = (0.05, 0.01)
SWEEP_GAINS = (0.01, 0.03, 0.05)
"""The retrain A/A test also counts promotions under these stricter ``level`` x ``min_improvement`` settings."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.retrains:
        return retrain_a_a(args)
    results: dict[str, Any] = {"load_avg_start": load_average(), "model": args.model, "suite": args.suite,
                               "n": args.n, "runs": args.runs, "temperature": args.temperature}
    start = time.perf_counter()
    runs = _sampled_runs(args)
    results["sampling_s"] = round(time.perf_counter() - start, 1)
    results["mean_accuracy"] = sum(sum(r) for r in runs) / (len(runs) * args.n)
    rates = [sum(run[i] for run in runs) / len(runs) for i in range(args.n)]
    results["items_never_passed"] = sum(r == 0 for r in rates)
    results["items_always_passed"] = sum(r == 1 for r in rates)
    for label, config in _RULES:
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


def retrain_a_a(args: argparse.Namespace) -> dict[str, Any]:
    """The A/A test between retrains: K adapters on one fixed training set, differing only in the train seed
    (see the module docstring). Cached under ``args.out``; returns (and prints) the figures."""
    from procmem.core.config import load_config
    from procmem.core.fileio import write_json
    from procmem.distill.traces import save_trace_build
    from procmem.distill.train import train_adapter
    from procmem.eval.config import EvalConfig
    from procmem.eval.experiment import match_budget
    from procmem.llm import local_model_dir
    from procmem.tasks.suites import load_suite
    from procmem.verifiers import build_verifier

    if args.retrains < 2:
        raise SystemExit(f"--retrains {args.retrains}: an A/A test needs at least 2 adapters")
    if args.out is None:
        raise SystemExit("--retrains needs --out DIR (the adapters and scores are cached there)")
    config = load_config(EvalConfig, args.config)
    suites = tuple(args.suites or config.train_suites)
    budget = config.train_examples if args.train_examples is None else args.train_examples
    train_n = args.train_n or max(1, math.ceil(budget / len(suites)) if budget else 64)
    distill = config.distill.model_copy(update={"model": args.model})
    out = Path(args.out)
    setup = {"model": args.model, "config": str(args.config), "suites": list(suites), "train_n": train_n,
             "test_n": args.test_n, "train_examples": budget, "distill": distill.model_dump(mode="json")}
    _check_setup(out, setup)
    results: dict[str, Any] = {"load_avg_start": load_average(), **{k: v for k, v in setup.items() if k != "distill"},
                               "retrains": args.retrains, "engine": args.engine,
                               "train": distill.train.model_dump(mode="json")}
    models_dir = args.models_dir or os.environ.get("PROCMEM_MODELS_CACHE") or str(_home_models())
    model_dir = local_model_dir(args.model, models_dir=models_dir)
    train_tasks = [t for suite in suites for t in load_suite(suite, split="train", n=train_n, check=build_verifier)]
    build = reference_build(train_tasks)
    if budget:
        build = match_budget(build, budget, 0)
    save_trace_build(build, out / "traces")
    test = {suite: load_suite(suite, split="test", n=args.test_n, check=build_verifier) for suite in suites}
    results["train_examples_distinct"] = len({t.task_id for t in build.kept})
    results["test_items"] = sum(len(tasks) for tasks in test.values())
    timings: dict[str, float] = {}
    scores: list[dict[str, SuiteScores]] = []
    adapters: list[dict[str, Any]] = []
    for k in range(args.retrains):
        seeded = distill.model_copy(update={"train": distill.train.model_copy(
            update={"seed": distill.train.seed + k})})
        clock = time.perf_counter()
        trained = train_adapter(build, seeded, model_dir=model_dir, work_dir=out / f"seed{k}" / "train",
                                quiet=args.quiet)
        timings[f"train_seed{k}"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        scores.append(_scores(out / f"seed{k}" / "scores.json", args, models_dir, trained.adapter_dir, test))
        timings[f"score_seed{k}"] = round(time.perf_counter() - clock, 1)
        adapters.append({"seed": seeded.train.seed, "steps": trained.steps, "examples": trained.examples,
                         "final_loss": round(trained.final_loss, 4), "train_s": round(trained.seconds, 1),
                         "pass_rate": _pooled_rate(scores[-1]),
                         **{f"pass_{suite}": s.accuracy for suite, s in scores[-1].items()}})
        write_json(out / "progress.json", {"adapters": adapters, "timings": timings})
    clock = time.perf_counter()
    base = _scores(out / "base" / "scores.json", args, models_dir, None, test)
    timings["score_base"] = round(time.perf_counter() - clock, 1)
    results["base_pass_rate"] = _pooled_rate(base)
    results["adapters"] = adapters
    ordered = [(a, b) for a in range(len(scores)) for b in range(len(scores)) if a != b]
    disjoint = [(a, a + 1) for a in range(0, len(scores) - 1, 2)]
    for label, rule in _RULES:
        for kind, pairs in (("pairs", ordered), ("disjoint", disjoint)):
            promoted = _promoted_pairs(scores, pairs, suites, rule)
            low, high = clopper_pearson(len(promoted), len(pairs))
            results[f"{label}_{kind}"] = {"decisions": len(pairs), "promotions": len(promoted),
                                         "rate": len(promoted) / len(pairs), "ci95": [round(low, 4), round(high, 4)],
                                         "promoted": [f"seed{a}->seed{b}" for a, b in promoted]}
    results["sweep_pairs"] = [  # what stricter settings would do to the same ordered pairs
        {"level": level, "min_improvement": gain, "decisions": len(ordered), "promotions": promoted,
         "rate": promoted / len(ordered)}
        for level in SWEEP_LEVELS for gain in SWEEP_GAINS
        for promoted in [len(_promoted_pairs(scores, ordered, suites,
                                             GateConfig(level=level, min_improvement=gain)))]]
    results["discordant_items_mean"] = sum(_discordant(scores[a], scores[b]) for a, b in ordered) / len(ordered)
    results["note"] = ("ordered pairs share adapters (each adapter is in 2*(K-1) of them), so those decisions are "
                       "not independent; the disjoint pairs are")
    results["timings_s"] = timings
    results["load_avg_end"] = load_average()
    write_json(out / "results.json", results)
    print(json.dumps(results, indent=2))
    return results


def reference_build(tasks: Sequence[Task]) -> TraceBuild:
    """One fixed SFT training set: each task's reference answer rendered as the completion of its memory-free
    prompt (the ``Trace`` form RFT's verified successes take). Tasks without a reference answer are skipped."""
    from procmem.core.prompts import render_completion, render_prompt
    from procmem.distill.traces import Trace, TraceBuild
    from procmem.verifiers import reference_answer

    kept = []
    for task in tasks:
        answer = reference_answer(task)
        if answer is None:
            continue
        prompt = render_prompt(task.prompt, answer_format=task.answer_format)
        kept.append(Trace(task_id=task.id, suite=task.suite, prompt=prompt, teacher_prompt=prompt,
                          answer_format=task.answer_format, completion=render_completion(answer, task.answer_format),
                          answer=answer, sample=0, score=1.0, status="kept", teacher="reference"))
    if not kept:
        raise SystemExit("no train item has a reference answer (exact: or rg: verifiers hold one); pick other suites")
    return TraceBuild(tuple(kept), (), ())


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion ``k / n`` (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def _check_setup(out: Path, setup: dict[str, Any]) -> None:
    """Refuse to resume a run made with other data or settings (its cached adapters would not match)."""
    from procmem.core.fileio import read_json, write_json

    path = out / "setup.json"
    if path.exists():
        saved = read_json(path)
        if saved != setup:
            changed = sorted(k for k in setup.keys() | saved.keys() if saved.get(k) != setup.get(k))
            raise SystemExit(f"{path}: this --out holds a run with other settings ({', '.join(changed)}); "
                             "use a new --out or the same flags")
        return
    write_json(path, setup)


def _scores(path: Path, args: argparse.Namespace, models_dir: str, adapter: Path | None,
            test: Mapping[str, Sequence[Task]]) -> dict[str, SuiteScores]:
    """The gate's scores of the base model with ``adapter`` on ``test`` (cached in ``path``)."""
    from procmem.core.fileio import read_json, write_json
    from procmem.distill.gate import evaluate
    from procmem.llm import opened_policy

    ids = {suite: tuple(t.id for t in tasks) for suite, tasks in test.items()}
    if path.exists():
        saved = {suite: SuiteScores.model_validate(row) for suite, row in read_json(path).items()}
        if {suite: s.task_ids for suite, s in saved.items()} == ids:
            return saved
    version = f"aa/{path.parent.name}" if adapter is not None else None
    with opened_policy(_home(models_dir), model=args.model, adapter=adapter or "none", version=version,
                       engine=args.engine) as llm:
        scores = evaluate(llm, test, GateConfig())
    write_json(path, {suite: s.model_dump(mode="json") for suite, s in scores.items()})
    return scores


def _promoted_pairs(scores: Sequence[Mapping[str, SuiteScores]], pairs: Sequence[tuple[int, int]],
                    suites: Sequence[str], rule: GateConfig) -> list[tuple[int, int]]:
    """The pairs ``(baseline, candidate)`` whose candidate the gate promotes under ``rule`` (no holdout)."""
    return [(a, b) for a, b in pairs if compare(scores[a], scores[b], test_suites=suites, holdout_suites=[],
                                                config=rule, baseline_name=f"seed{a}").passed]


def _pooled_rate(scores: Mapping[str, SuiteScores]) -> float:
    passed = [p for s in scores.values() for p in s.passed]
    return sum(passed) / len(passed) if passed else 0.0


def _discordant(a: Mapping[str, SuiteScores], b: Mapping[str, SuiteScores]) -> int:
    return sum(x != y for suite in a for x, y in zip(a[suite].passed, b[suite].passed, strict=True))


def _home_models() -> Path:
    from procmem.core import Home

    return Home.resolve().models


def _home(models_dir: str) -> Any:
    """A home whose bundled models are read from ``models_dir`` (the policy loader's models cache)."""
    from procmem.core import Home
    from procmem.llm.bundled import MODELS_CACHE_ENV

    os.environ[MODELS_CACHE_ENV] = models_dir
    return Home.resolve()


def _promotes(base: Sequence[bool], cand: Sequence[bool], config: GateConfig, pad: int = 0) -> bool:
    """The real gate decision between two per-item verdict lists (``pad`` extra items both fail)."""
    ids = tuple(f"i{i}" for i in range(len(base) + pad))
    baseline = {"t": SuiteScores(suite="t", task_ids=ids, passed=(*base, *[False] * pad))}
    candidate = {"t": SuiteScores(suite="t", task_ids=ids, passed=(*cand, *[False] * pad))}
    return compare(baseline, candidate, test_suites=["t"], holdout_suites=[], config=config,
                   baseline_name="a").passed


def _sampled_runs(args: argparse.Namespace) -> list[list[bool]]:
    from procmem.agent.scoring import score_tasks
    from procmem.core import GenerationConfig
    from procmem.core.prompts import ANSWER_STOP
    from procmem.llm import open_policy
    from procmem.tasks.suites import load_suite

    tasks = load_suite(args.suite, split=args.split, n=args.n)
    if len(tasks) < args.n:
        raise SystemExit(f"{args.suite} has only {len(tasks)} {args.split} items; lower --n")
    models_dir = args.models_dir or os.environ.get("PROCMEM_MODELS_CACHE") or str(_home_models())
    llm = open_policy(_home(models_dir), model=args.model, adapter="none", engine=args.engine)
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
    parser.add_argument("--engine", default="auto", help="Local inference engine: auto, llamacpp or transformers.")
    retrain = parser.add_argument_group("A/A between retrains (--retrains K)")
    retrain.add_argument("--retrains", type=int, default=0,
                         help="Train K adapters on one fixed training set, differing only in the train seed, and "
                              "run the gate on every ordered pair (0: the sampled-run A/A test instead).")
    retrain.add_argument("--out", default=None, help="Directory caching the adapters, scores and results.json "
                                                     "(a rerun resumes).")
    retrain.add_argument("--config", default=str(DEFAULT_CONFIG),
                         help="Experiment config whose suites and training settings (distill.*, train_examples) "
                              "are used.")
    retrain.add_argument("--suites", type=lambda text: [s for s in text.split(",") if s], default=None,
                         help="Comma list of suites (default: the config's train_suites).")
    retrain.add_argument("--train-n", type=int, default=0,
                         help="Train items per suite (0: train_examples / number of suites).")
    retrain.add_argument("--train-examples", type=int, default=None,
                         help="Examples trained on, repeating or subsampling the items (default: the config's "
                              "train_examples; 0: each item once).")
    retrain.add_argument("--test-n", type=int, default=34, help="Held-out test items per suite that every "
                                                                 "adapter answers.")
    retrain.add_argument("--quiet", action="store_true", help="No training progress bars.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
