"""eval/bench_gate.py runs end to end at a toy size on the tiny model: sampled runs of one model, the real
gate decision between them, and the power table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gate_benchmark_counts_a_and_a_promotions_and_computes_power(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_gate", REPO / "eval" / "bench_gate.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Say something about {i}.",
                                         "verifier": "regex:(?s).*[aeiou].*", "split": "train"}) + "\n"
                             for i in range(6)))
    results = bench.main(["--model", "local:tiny", "--models-dir", str(tmp_path / "models"), "--suite", str(suite),
                          "--n", "6", "--runs", "3", "--max-tokens", "4", "--trials", "50",
                          "--power-sizes", "10,20", "--temperature", "1.0"])
    assert results["gate_pairs"]["decisions"] == 6 and results["gate_resampled"]["decisions"] == 50
    for key in ("gate_pairs", "gate_resampled", "no_test_pairs", "no_test_resampled"):
        assert 0 <= results[key]["promotions"] <= results[key]["decisions"], key
    # The point-estimate rule promotes at least as often as the tested one (same draws, a stricter rule).
    assert results["gate_resampled"]["promotions"] <= results["no_test_resampled"]["promotions"]
    gains = {(row["gain"], row["churn"]): row for row in results["power"]}
    assert gains[(0.1, 0.0)]["n=20"] >= gains[(0.1, 0.0)]["n=10"]
    assert 0.0 <= gains[(0.05, 0.05)]["n=10"] <= gains[(0.2, 0.05)]["n=10"] <= 1.0
