"""Summaries of an experiment: bootstrap CIs, ``results.json`` (stable schema), ``report.md`` and PNG plots."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procmem.core.fileio import atomic_write_text, read_json, write_json
from procmem.eval.config import ARMS, Arm, EvalConfig
from procmem.eval.experiment import ArmScores, budget_rows, load_splits, stage_dir, stage_timings, trace_counts

__all__ = ["COMPARISONS", "RESULTS_SCHEMA", "Difference", "Summary", "bootstrap_ci", "differences",
           "majority_baselines", "paired_bootstrap", "summarise", "write_report"]

RESULTS_SCHEMA = "procmem.eval.results/3"
COMPARISONS: tuple[tuple[Arm, Arm], ...] = (
    ("pmd", "base"), ("pmd", "rft"), ("pmd", "sdpo"), ("pmd", "pmd-frozen-memory"), ("pmd", "pmd-frozen-policy"),
    ("pmd", "pmd-no-reflection"), ("pmd", "base+memory"), ("sdpo", "rft"), ("rft", "base"), ("sdpo", "base"),
    ("pmd-self-distill", "pmd-sft"), ("pmd-self-distill", "pmd-mixed"), ("pmd-mixed", "pmd-sft"),
    ("pmd-self-distill", "base"), ("pmd-mixed", "base"), ("pmd-sft", "base"),
)
"""The paired differences the report gives a CI for (final round), when both arms ran."""


@dataclass(frozen=True)
class Summary:
    """An arm's figures for one round, pooled over seeds."""

    arm: str
    round: int
    test_accuracy: float
    test_ci95: tuple[float, float]
    holdout_accuracy: float | None
    holdout_ci95: tuple[float, float] | None
    per_suite: dict[str, float]
    per_suite_ci95: dict[str, tuple[float, float]]
    well_formed: dict[str, float | None]
    """Per suite, the share of answers in the expected form (None where the verifier does not say)."""
    correct_when_well_formed: dict[str, float | None]
    """Per suite, the accuracy among well-formed answers: procedure learning apart from format learning."""
    tokens: float
    """Mean completion tokens generated while evaluating, per seed."""
    wall_time_s: float
    """Mean time of the arm's own stages (traces, training, evaluation), per seed."""
    train_examples: float
    train_steps: float
    distinct_traces: float
    seeds: int


def paired_bootstrap(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]] | None = None, *, resamples: int,
                     seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of mean(a) - mean(b) (of mean(a) when ``b`` is None), resampling hierarchically:
    seeds with replacement, then items with replacement within each picked seed.

    ``a[s][i]`` is seed s's verdict on item i. The two arms are paired: the same resampled seeds and item
    indices are used for both, so ``a[s]`` and ``b[s]`` must be verdicts on the same items in the same order.
    """
    import numpy as np

    pairs = [(np.asarray(x, dtype=float), np.asarray(y, dtype=float) if b is not None else None)
             for x, y in zip(a, b if b is not None else a, strict=True) if len(x)]
    if b is not None:
        for x, y in pairs:
            if y is None or len(x) != len(y):
                raise ValueError("paired_bootstrap: both arms must score the same items of each seed")
    if not pairs:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    n_seeds = len(pairs)
    values = [x - y if y is not None and b is not None else x for x, y in pairs]
    sizes = np.array([len(v) for v in values], dtype=float)
    # sums[j, s, r]: slot j of resample r filled by seed s, its items resampled independently per slot
    sums = np.empty((n_seeds, n_seeds, resamples))
    for j in range(n_seeds):
        for s, v in enumerate(values):
            sums[j, s] = v[rng.integers(0, len(v), size=(resamples, len(v)))].sum(axis=1)
    picked = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    slots = np.arange(n_seeds)
    totals = sums[slots[None, :], picked, np.arange(resamples)[:, None]].sum(axis=1)
    means = np.sort(totals / sizes[picked].sum(axis=1))
    return (float(means[int(0.025 * (resamples - 1))]), float(means[int(0.975 * (resamples - 1))]))


def bootstrap_ci(outcomes: Sequence[Sequence[bool]], *, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the mean pass rate, resampling seeds and then items within each seed
    (:func:`paired_bootstrap` of one arm)."""
    return paired_bootstrap(outcomes, None, resamples=resamples, seed=seed)


@dataclass(frozen=True)
class Difference:
    """A paired difference of two arms' final-round test pass rates (points of accuracy as a fraction)."""

    arm: str
    versus: str
    difference: float
    ci95: tuple[float, float]
    per_suite: dict[str, float]
    per_suite_ci95: dict[str, tuple[float, float]]
    seeds: int


def differences(scores: Sequence[ArmScores], config: EvalConfig) -> list[Difference]:
    """:data:`COMPARISONS` in the final round, paired on each seed's items (only seeds both arms finished)."""
    final = {(s.arm, s.seed): s for s in scores if s.round == config.rounds}
    out: list[Difference] = []
    for arm, versus in COMPARISONS:
        seeds = [seed for seed in config.seeds if (arm, seed) in final and (versus, seed) in final]
        if not seeds:
            continue
        rows = [(final[(arm, seed)], final[(versus, seed)]) for seed in seeds]
        for x, y in rows:
            if x.item_ids != y.item_ids:
                raise ValueError(f"{arm} and {versus} scored different items in seed {x.seed}")
        suites = sorted(rows[0][0].test)
        a = [_flat(x.test) for x, _ in rows]
        b = [_flat(y.test) for _, y in rows]
        out.append(Difference(
            arm=arm, versus=versus, difference=_mean(a) - _mean(b),
            ci95=paired_bootstrap(a, b, resamples=config.bootstrap),
            per_suite={su: _mean([x.test[su] for x, _ in rows]) - _mean([y.test[su] for _, y in rows])
                       for su in suites},
            per_suite_ci95={su: paired_bootstrap([x.test[su] for x, _ in rows], [y.test[su] for _, y in rows],
                                                 resamples=config.bootstrap) for su in suites},
            seeds=len(seeds)))
    return out


def summarise(scores: Sequence[ArmScores], config: EvalConfig) -> list[Summary]:
    """One :class:`Summary` per arm and round, in the config's arm order."""
    summaries: list[Summary] = []
    for arm in [a for a in ARMS if a in config.arms]:
        for round_ in range(1, config.rounds + 1):
            group = [s for s in scores if s.arm == arm and s.round == round_]
            if group:
                summaries.append(_summary(arm, round_, group, config.bootstrap))
    return summaries


def _summary(arm: str, round_: int, group: Sequence[ArmScores], resamples: int) -> Summary:
    test = [_flat(s.test) for s in group]
    holdout = [_flat(s.holdout) for s in group]
    has_holdout = any(holdout)
    suites = sorted(group[0].test)
    return Summary(
        arm=arm, round=round_,
        test_accuracy=_mean(test), test_ci95=bootstrap_ci(test, resamples=resamples),
        holdout_accuracy=_mean(holdout) if has_holdout else None,
        holdout_ci95=bootstrap_ci(holdout, resamples=resamples) if has_holdout else None,
        per_suite={suite: _mean([s.test[suite] for s in group]) for suite in suites},
        per_suite_ci95={suite: bootstrap_ci([s.test[suite] for s in group], resamples=resamples)
                        for suite in suites},
        well_formed={suite: _form_share(group, suite)[0] for suite in suites},
        correct_when_well_formed={suite: _form_share(group, suite)[1] for suite in suites},
        tokens=sum(s.tokens for s in group) / len(group),
        wall_time_s=sum(s.wall_time_s for s in group) / len(group),
        train_examples=sum(s.train_examples for s in group) / len(group),
        train_steps=sum(s.train_steps for s in group) / len(group),
        distinct_traces=sum(s.distinct_traces for s in group) / len(group),
        seeds=len(group),
    )


def _form_share(group: Sequence[ArmScores], suite: str) -> tuple[float | None, float | None]:
    """(share of well-formed answers, accuracy among them) on ``suite``, pooled over seeds; None where the
    verifier does not say."""
    pairs = [(formed, passed) for s in group
             for formed, passed in zip(s.well_formed.get(suite, []), s.test[suite], strict=False) if formed is not None]
    if not pairs:
        return None, None
    formed = [passed for ok, passed in pairs if ok]
    return len(formed) / len(pairs), (sum(formed) / len(formed) if formed else None)


def _flat(by_suite: dict[str, list[bool]]) -> list[bool]:
    return [value for suite in sorted(by_suite) for value in by_suite[suite]]


def _mean(rows: Sequence[Sequence[bool]]) -> float:
    values = [v for row in rows for v in row]
    return sum(values) / len(values) if values else 0.0


def majority_baselines(config: EvalConfig) -> dict[str, dict[str, Any] | None]:
    """Per test and holdout suite, what always giving its most common gold answer scores on the very items
    the arms answer (every seed's, pooled; scored by the real verifier): the floor an accuracy must clear.
    None for a suite whose verifier holds no gold answer as text."""
    from procmem.verifiers import build_verifier, reference_answer

    dev = config.score_on == "dev"
    splits = load_splits(config, with_train=False, dev_only=dev)
    pooled: dict[str, list[Any]] = {}
    for by_suite in [*([splits.dev] if dev else splits.test.values()), *splits.holdout.values()]:
        for suite, items in by_suite.items():
            pooled.setdefault(suite, []).extend(items)
    baselines: dict[str, dict[str, Any] | None] = {}
    for suite, tasks in pooled.items():
        golds = [g for g in map(reference_answer, tasks) if g is not None]
        if not golds:
            baselines[suite] = None
            continue
        answer = Counter(golds).most_common(1)[0][0]
        passed = sum(build_verifier(task).verify(answer).passed for task in tasks)
        baselines[suite] = {"answer": answer, "accuracy": passed / len(tasks), "n": len(tasks)}
    return baselines


def _pooled_baseline(baselines: dict[str, dict[str, Any] | None], suites: Sequence[str]) -> float | None:
    """The baseline over all items of ``suites``; None unless every one of them has a baseline."""
    known = [row for s in suites if (row := baselines.get(s)) is not None]
    if not known or len(known) < len(suites):
        return None
    return sum(r["accuracy"] * r["n"] for r in known) / sum(r["n"] for r in known)


def write_report(scores: Sequence[ArmScores], config: EvalConfig, out: Path, *, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.json``, ``report.md`` and the plots into ``out``; return the results document."""
    summaries = summarise(scores, config)
    results = _results(summaries, config, out, {**meta, "seeds_finished": sorted({s.seed for s in scores})})
    results["differences"] = [_difference_dict(d) for d in differences(scores, config)]
    results["uplift"] = _stage_rows(out, config, "uplift.json")
    results["stage_timings_s"] = stage_timings(config, out)
    results["traces"] = trace_counts(config, out)
    results["budgets"] = budget_rows(config, out)
    write_json(out / "results.json", results)
    scored = "dev" if config.score_on == "dev" else "test"
    _plot_rounds(summaries, out / "accuracy_by_round.png", scored=scored)
    _plot_suites(summaries, config.rounds, out / "accuracy_by_task.png", scored=scored)
    atomic_write_text(out / "report.md", _markdown(summaries, config, results))
    return results


def _results(summaries: Sequence[Summary], config: EvalConfig, out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    final = {s.arm: s for s in summaries if s.round == config.rounds}
    return {
        "schema": RESULTS_SCHEMA,
        "meta": meta,
        "config": config.model_dump(mode="json"),
        "final_round": config.rounds,
        "arms": {arm: _summary_dict(s) for arm, s in final.items()},
        "rounds": [_summary_dict(s) for s in summaries],
        "majority_baseline": majority_baselines(config),
    }


def _difference_dict(diff: Difference) -> dict[str, Any]:
    data = dict(diff.__dict__)
    data["ci95"] = list(diff.ci95)
    data["per_suite_ci95"] = {suite: list(ci) for suite, ci in diff.per_suite_ci95.items()}
    return data


def _stage_rows(out: Path, config: EvalConfig, name: str) -> list[dict[str, Any]]:
    """Every finished round's ``name`` record (``uplift.json``, ``collect.json``), with its seed and round."""
    rows = []
    for seed in config.seeds:
        for round_ in range(1, config.rounds + 1):
            path = stage_dir(out, seed, round_) / name
            if path.exists():
                rows.append({"seed": seed, "round": round_, **read_json(path)})
    return rows


def _summary_dict(summary: Summary) -> dict[str, Any]:
    data = dict(summary.__dict__)
    data["test_ci95"] = list(summary.test_ci95)
    data["holdout_ci95"] = list(summary.holdout_ci95) if summary.holdout_ci95 else None
    data["per_suite_ci95"] = {suite: list(ci) for suite, ci in summary.per_suite_ci95.items()}
    return data



def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "n/a" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _markdown(summaries: Sequence[Summary], config: EvalConfig, results: dict[str, Any]) -> str:
    final = [s for s in summaries if s.round == config.rounds]
    items = "dev items (the run that makes choices)" if config.score_on == "dev" else "held-out test items"
    lines = [
        "# procmem evaluation",
        "",
        f"- command: `{results['meta'].get('command', '')}`",
        f"- report written {results['meta'].get('date', '')} at commit {results['meta'].get('commit', '')} (with "
        "`--report-only`, the stages may come from earlier commits)",
        f"- model {config.session.model}; train suites {', '.join(config.train_suites)}; "
        f"holdout {', '.join(config.holdout_suites) or 'none'}",
        f"- {config.rounds} round(s), seeds finished {results['meta']['seeds_finished']} of "
        f"{list(config.seeds)}, {config.n_train} train / "
        f"{config.n_dev if config.score_on == 'dev' else config.n_test} scored / {config.n_holdout} holdout items per "
        f"suite{' (a new block of train items each round)' if config.new_items_each_round else ''}; "
        f"PMD recipe `{config.pmd_recipe}`, self-distillation teacher `{config.distill.self_distill.teacher}`",
        "- episode-local arms (`rft`, `sdpo`) collect **without memory**; PMD arms collect with their memory "
        "(see *Training budgets per round*: `with memory`)",
        "- PMD teachers read worked examples and "
        + ("only the advice the verifier validated in use (`memory.teacher`: "
           f"{config.memory.teacher.min_uses}+ uses, Wilson lower bound at z={config.memory.teacher.z:g} above the "
           "suite's pass rate)" if config.memory.teacher.validated_advice_only
           else "all advice (`memory.teacher.validated_advice_only = false`)"),
        "",
        f"## Round {config.rounds}: pass@1 on {items} (%, 95% bootstrap CI over seeds and items)",
        "",
        "| arm | accuracy | 95% CI | holdout acc | 95% CI | seeds | train examples | eval tokens | wall time (s) |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for s in final:
        lines.append(f"| {s.arm} | {_pct(s.test_accuracy)} | {_ci(s.test_ci95)} | {_pct(s.holdout_accuracy)} | "
                     f"{_ci(s.holdout_ci95)} | {s.seeds} | {s.train_examples:.0f} | {s.tokens:.0f} | "
                     f"{s.wall_time_s:.0f} |")
    baselines = results["majority_baseline"]
    lines += ["", f"Majority-answer baseline (always the most common gold answer, same items): "
              f"{_pct(_pooled_baseline(baselines, config.train_suites))}, holdout "
              f"{_pct(_pooled_baseline(baselines, config.holdout_suites))}."]
    suites = sorted(final[0].per_suite) if final else []
    lines += ["", "## Per task (accuracy % [95% CI], final round)", "",
              "| arm | " + " | ".join(map(_short, suites)) + " |", "|---|" + "---:|" * len(suites)]
    for s in final:
        lines.append(f"| {s.arm} | " + " | ".join(f"{_pct(s.per_suite[x])} {_ci(s.per_suite_ci95[x])}"
                                                 for x in suites) + " |")
    lines.append("| *majority answer* | " + " | ".join(_baseline_cell(baselines.get(x)) for x in suites) + " |")
    lines += ["", "## Format and procedure, final round (% of answers well-formed / % correct when well-formed)", "",
              "| arm | " + " | ".join(map(_short, suites)) + " |", "|---|" + "---:|" * len(suites)]
    for s in final:
        lines.append(f"| {s.arm} | " + " | ".join(
            f"{_pct(s.well_formed.get(x))} / {_pct(s.correct_when_well_formed.get(x))}" for x in suites) + " |")
    lines += ["", "## By round (accuracy %)", "", "| arm | " + " | ".join(f"r{r}" for r in
              range(1, config.rounds + 1)) + " |", "|---|" + "---:|" * config.rounds]
    for arm in dict.fromkeys(s.arm for s in summaries):
        row = {s.round: s for s in summaries if s.arm == arm}
        lines.append(f"| {arm} | " + " | ".join(_pct(row[r].test_accuracy) if r in row else "" for r in
                                                 range(1, config.rounds + 1)) + " |")
    lines += ["", "## Paired differences, final round (points; 95% CI, seeds then items resampled, arms paired on "
              "the same items)", "", "| difference | all suites | 95% CI | " + " | ".join(map(_short, suites)) + " |",
              "|---|---:|---|" + "---:|" * len(suites)]
    for d in results["differences"]:
        cells = " | ".join(f"{_pct(d['per_suite'][x])} {_ci(tuple(d['per_suite_ci95'][x]))}" for x in suites)
        lines.append(f"| {d['arm']} - {d['versus']} | {_pct(d['difference'])} | {_ci(tuple(d['ci95']))} | {cells} |")
    lines += ["", "## Training budgets per round (per seed: collection, then training)", "",
              "| seed | round | arm | with memory | problems | attempts | collect tokens | collect acc | objective | "
              "examples | steps | distinct problems | rollouts | trained tokens |",
              "|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in results["budgets"]:
        lines.append(f"| {row['seed']} | {row['round']} | {row['arm']} | {'yes' if row['with_memory'] else 'no'} | "
                     f"{row['problems']} | {row['attempts']} | {row['collect_tokens']} | "
                     f"{_pct(row['collect_accuracy'])} | {row.get('objective', 'n/a')} | {row.get('examples', 0)} | "
                     f"{row.get('steps', 0)} | {row.get('distinct_problems', 0)} | {row.get('rollouts', 0)} | "
                     f"{row.get('trained_tokens', 0)} |")
    lines += ["", "## Traces per round (SFT data: verified traces; the teacher's candidates where it wrote any)", "",
              "| seed | round | arm | problems seen by the teacher | candidates | problems with a trace | "
              + " | ".join(map(_short, config.train_suites)) + " |", "|---:|---:|---|---:|---:|---:|"
              + "---:|" * len(config.train_suites)]
    for row in results["traces"]:
        lines.append(f"| {row['seed']} | {row['round']} | {row['arm']} | {row['problems'] or 'n/a'} | "
                     f"{row['candidates'] or 'n/a'} | {row['verified_problems']} | "
                     + " | ".join(str(row["verified_by_suite"].get(x, 0)) for x in config.train_suites) + " |")
    lines += ["", "## Memory uplift on the round's train items (PMD's policy with memory vs memory-free, %)", "",
              "| seed | round | suite | n | with memory | memory-free | uplift |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    for row in results["uplift"]:
        for suite, u in row["suites"].items():
            lines.append(f"| {row['seed']} | {row['round']} | {_short(suite)} | {u['n']} | {_pct(u['with_memory'])} | "
                         f"{_pct(u['memory_free'])} | {_pct(u['uplift'])} |")
    lines += ["", "## Time per stage (s, as measured)", ""]
    for row in results["stage_timings_s"]:
        lines.append(f"- seed {row['seed']} round {row['round']}: " + ", ".join(
            f"{k} {v:.0f}" for k, v in row.items() if k not in ("seed", "round") and isinstance(v, int | float)))
    lines += ["", "![accuracy by round](accuracy_by_round.png)", "", "![accuracy by task](accuracy_by_task.png)", ""]
    return "\n".join(lines)


def _baseline_cell(baseline: dict[str, Any] | None) -> str:
    return "n/a" if baseline is None else f"{_pct(baseline['accuracy'])} (`{baseline['answer'][:12]}`)"


def _plot_rounds(summaries: Sequence[Summary], path: Path, *, scored: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in dict.fromkeys(s.arm for s in summaries):
        rows = [s for s in summaries if s.arm == arm]
        x = [s.round for s in rows]
        y = [100 * s.test_accuracy for s in rows]
        err = [[100 * (s.test_accuracy - s.test_ci95[0]) for s in rows],
               [100 * (s.test_ci95[1] - s.test_accuracy) for s in rows]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
    ax.set_xlabel("round")
    ax.set_ylabel(f"{scored} pass@1 (%)")
    ax.set_title(f"Accuracy on the {scored} items by round (95% CI)")
    ax.set_xticks(sorted({s.round for s in summaries}))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_suites(summaries: Sequence[Summary], final_round: int, path: Path, *, scored: str) -> None:
    """Each arm's accuracy per suite in its latest scored round: ``final_round`` once the run is complete; an arm
    that has not reached it yet (a partial run) shows its latest round, named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[str, Summary] = {}
    for summary in summaries:
        if summary.arm not in latest or summary.round > latest[summary.arm].round:
            latest[summary.arm] = summary
    shown = list(latest.values())
    suites = sorted(shown[0].per_suite) if shown else []
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(suites) + 2), 4.5))
    width = 0.8 / max(1, len(shown))
    for index, summary in enumerate(shown):
        xs = [i + index * width for i in range(len(suites))]
        label = summary.arm if summary.round == final_round else f"{summary.arm} (round {summary.round})"
        ax.bar(xs, [100 * summary.per_suite.get(s, 0.0) for s in suites], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(suites))])
    ax.set_xticklabels([_short(s) for s in suites], fontsize=8)
    ax.set_ylabel(f"{scored} pass@1 (%)")
    ax.set_title(f"Per-task accuracy on the {scored} items, round {final_round}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _short(suite: str) -> str:
    return suite.split("?", 1)[0].removeprefix("rg:")

