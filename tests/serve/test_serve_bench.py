"""A smoke run of eval/bench/bench_serve.py on the tiny model: it runs end to end and reports every figure."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_bench_serve_reports_latency_throughput_and_write_cost() -> None:
    from procmem.eval.bench.bench_serve import main

    results = main(["--model", "local:tiny", "--tokens", "2", "--n", "2", "--calls", "1"])
    assert set(results["latency_ms"]) == {"direct", "serve_memory_off", "serve_memory_on"}
    assert set(results["throughput_tokens_per_s"]) == {"1", "8", "16", "32"}
    assert results["calls_recorded"] == 2 + 2 * 2 + 1 + 8 + 16 + 32  # warm-ups, 2 serve latency rows, throughput
    assert results["engine_batched_16_tokens_per_s"] > 0 and results["call_log_commit_ms_mean"] >= 0
