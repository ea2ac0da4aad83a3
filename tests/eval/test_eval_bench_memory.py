"""eval/bench/bench_memory.py runs end to end at a toy size and reports every figure (no timing is asserted:
speed belongs in the benchmark's own output, not in tests)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "eval" / "bench"


def test_the_memory_benchmark_reports_latency_recall_writes_and_retrieval() -> None:
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH / "bench_memory.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(bench)
        results = bench.main(["--sizes", "120", "--queries", "4", "--episodes", "4"])
    finally:
        sys.modules.pop(spec.name, None)
    [row] = results["latency"]
    assert row["entries"] == 120
    for name in ("unfiltered", "filtered"):
        assert 0.5 <= row[name]["chroma_recall_at_k_ties_counted"] <= 1.0  # HNSW is approximate
        assert row[name]["chroma_p95_ms"] > 0 and row[name]["numpy_p95_ms"] > 0
    writes = results["writes"]
    assert writes["retrieve_episodes"] == 8 and writes["retrieve_p95_ms"] > 0
    assert writes["minilm_batched_32_eps"] > 0 and writes["minilm_after_episode_one_at_a_time_eps"] > 0
