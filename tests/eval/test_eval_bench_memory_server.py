"""eval/bench/bench_memory_server.py runs end to end at a toy size against a real chroma server and reports every
figure (no timing is asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "eval" / "bench"


def test_the_server_benchmark_reports_throughput_and_latency_while_writing() -> None:
    spec = importlib.util.spec_from_file_location("bench_memory_server", BENCH / "bench_memory_server.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--writers", "1,2", "--episodes", "2"])
    assert [r["writers"] for r in results["runs"]] == [1, 2]
    assert [r["entries_after"] for r in results["runs"]] == [2, 6]  # nothing lost across the runs
    assert all(r["episodes_per_s"] > 0 for r in results["runs"])
