"""The evidence: the memory-free PMD student against base, base+memory, the episode-local RFT and SDPO, and ablations.
The benchmark scripts sit apart, in ``eval/bench/`` (``procmem.eval.bench``); nothing of theirs is exported here.
eval sits on top: it may import every other package."""

from procmem.eval.config import ARM_SPECS, ARMS, PAPER_ARMS, TRAINED_ARMS, Arm, ArmSpec, EvalConfig
from procmem.eval.experiment import (
    ArmScores,
    Experiment,
    Splits,
    Suites,
    budget_rows,
    finished_scores,
    load_splits,
    load_suites,
    match_budget,
    run_experiment,
    stage_timings,
    trace_counts,
)
from procmem.eval.report import (
    COMPARISONS,
    RESULTS_SCHEMA,
    Difference,
    Summary,
    bootstrap_ci,
    differences,
    majority_baselines,
    paired_bootstrap,
    summarise,
    write_report,
)

__all__ = [
    "ARMS",
    "ARM_SPECS",
    "COMPARISONS",
    "PAPER_ARMS",
    "RESULTS_SCHEMA",
    "TRAINED_ARMS",
    "Arm",
    "ArmScores",
    "ArmSpec",
    "Difference",
    "EvalConfig",
    "Experiment",
    "Splits",
    "Suites",
    "Summary",
    "bootstrap_ci",
    "budget_rows",
    "differences",
    "finished_scores",
    "load_splits",
    "load_suites",
    "majority_baselines",
    "match_budget",
    "paired_bootstrap",
    "run_experiment",
    "stage_timings",
    "summarise",
    "trace_counts",
    "write_report",
]
