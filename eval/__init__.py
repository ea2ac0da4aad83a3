"""The evidence: experiments comparing the memory-free student with base, base+memory, RFT and controls.
The benchmark scripts sit apart, in ``eval/bench/`` (``procmem.eval.bench``); nothing of theirs is exported here.
eval sits on top: it may import every other package."""

from procmem.eval.config import ARM_SPECS, ARMS, TRAINED_ARMS, Arm, ArmSpec, EvalConfig
from procmem.eval.experiment import (
    ArmScores,
    Experiment,
    PlaceboRetriever,
    Splits,
    Suites,
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
    "RESULTS_SCHEMA",
    "TRAINED_ARMS",
    "Arm",
    "ArmScores",
    "ArmSpec",
    "Difference",
    "EvalConfig",
    "Experiment",
    "PlaceboRetriever",
    "Splits",
    "Suites",
    "Summary",
    "bootstrap_ci",
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
