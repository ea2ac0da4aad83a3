"""Task suites: turn a suite spec into a list of :class:`~procmem.core.Task`.

``load_suite("rg:chain_sum?min_terms=2&max_terms=2", split="test", n=40)`` generates reasoning-gym items
(disjoint train and test splits); ``load_suite("builtin:arith")`` loads a suite shipped with procmem;
``load_suite("my_tasks.jsonl")`` loads a JSONL task file. See :mod:`procmem.tasks.suites`.
"""

from procmem.tasks.jsonl import TaskCheck, load_jsonl
from procmem.tasks.rg import TEST_SEED, TRAIN_SEED, load_rg, parse_rg_spec
from procmem.tasks.suites import DATA_DIR, builtin_path, builtin_suites, load_suite

__all__ = [
    "DATA_DIR",
    "TEST_SEED",
    "TRAIN_SEED",
    "TaskCheck",
    "builtin_path",
    "builtin_suites",
    "load_jsonl",
    "load_rg",
    "load_suite",
    "parse_rg_spec",
]
