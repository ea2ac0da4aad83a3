"""The evidence: experiments comparing the memory-free student with base, base+memory, RFT and controls,
and benchmark scripts (``eval/bench_*.py``). eval sits on top: it may import every other package."""

from procmem.eval.config import ARM_SPECS, ARMS, TRAINED_ARMS, Arm, ArmSpec, EvalConfig
from procmem.eval.experiment import ArmScores, Experiment, PlaceboRetriever, finished_scores, run_experiment
from procmem.eval.report import RESULTS_SCHEMA, Summary, bootstrap_ci, majority_baselines, summarise, write_report

__all__ = [
    "ARMS",
    "ARM_SPECS",
    "RESULTS_SCHEMA",
    "TRAINED_ARMS",
    "Arm",
    "ArmScores",
    "ArmSpec",
    "EvalConfig",
    "Experiment",
    "PlaceboRetriever",
    "Summary",
    "bootstrap_ci",
    "finished_scores",
    "majority_baselines",
    "run_experiment",
    "summarise",
    "write_report",
]
