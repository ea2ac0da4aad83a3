"""eval/bench/bench_production.py runs the production loop end to end at a toy size on the tiny model: a real
``procmem serve`` process, an app of concurrent ``openai`` users with verifier results and delayed corrections,
``memory reflect`` and ``distill --once`` (forced, so the hot swap is exercised), and every figure reported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "eval" / "bench"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_production", BENCH / "bench_production.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_the_production_benchmark_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "bench_production"
    results = _bench().main([
        "--model", "local:tiny", "--models-dir", str(tmp_path / "models"), "--home", str(tmp_path / "home"),
        "--candidates", "rg:chain_sum?min_terms=2&max_terms=3&min_digits=1&max_digits=1",
        "--n-dev", "6", "--n-heldout", "8", "--n-train", "24", "--rounds", "1", "--users", "4", "--probe-n", "3",
        "--reflect-calls", "1", "--k", "1", "--epochs", "1", "--min-heldout", "1", "--n-holdout", "1",
        "--max-delay", "0.3", "--max-tokens", "4", "--force-promote", "--out", str(out), "--json"])
    assert results["complete"] and results["suite"].startswith("rg:chain_sum")
    # accuracy per adapter version, memory-free and with memory, with CIs and the majority answer beside them
    assert [e["name"] for e in results["evaluations"]] == ["base", "after_distill_1"]
    for row in results["accuracy_by_version"].values():
        for key in ("memory_off", "memory_on"):
            low, high = row[key]["ci95"]
            assert 0.0 <= low <= row[key]["accuracy"] <= high <= 1.0 and row[key]["n"] == 8
        assert 0.0 <= row["majority"] <= 1.0
    # the forced promotion was swapped in without a restart, and the app saw the new version
    assert results["promotions"][0]["version"] == "v1" and "first_response_t" in results["promotions"][0]
    assert results["evaluations"][-1]["memory_off"]["versions"] == {"v1": 8}
    assert results["first_promotion_s"] > 0 and results["first_promoted_response_s"] >= results["first_promotion_s"]
    # latency idle and while distillation runs
    latency = results["latency_ms"]
    assert latency["idle"]["n"] == 3 and latency["during_distill"]["n"] >= 1 and latency["p95_ratio"] > 0
    assert results["latency_ms_by_round"]["1"]["p95_ratio"] > 0
    # nothing lost, nothing failed
    check = results["feedback_check"]
    assert check["fed_episodes"] > 0 and check["correction_posts"] > 0 and check["lost"] == 0
    assert results["requests"]["failed"] == 0 and results["requests"]["failed_during_swaps"] == 0
    for key in ("final_vs_base_points", "final_vs_majority_points", "accuracy_ok", "latency_ok", "feedback_ok",
                "requests_ok", "load_avg_start", "load_avg_end"):
        assert key in results, key
    assert out.with_suffix(".png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["complete"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["suite"] == results["suite"]
