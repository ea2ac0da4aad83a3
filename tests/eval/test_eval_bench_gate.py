"""eval/bench/bench_gate.py runs end to end at a toy size on the tiny model: sampled runs of one model, the real
gate decision between them, and the power table; and the A/A test between retrains under other seeds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "eval" / "bench"


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_gate", BENCH / "bench_gate.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_gate_benchmark_counts_a_and_a_promotions_and_computes_power(tmp_path: Path) -> None:
    bench = _bench()
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


def test_the_retrain_a_a_test_trains_seeded_adapters_on_one_set_and_decides_every_pair(tmp_path: Path) -> None:
    """--retrains K: K adapters on the same examples that differ (the seed changes training), every ordered
    pair and the disjoint pairs decided by the real gate, everything cached so a rerun trains nothing."""
    from safetensors.torch import load_file

    from procmem.distill.config import GateConfig
    from procmem.distill.gate import SuiteScores, compare

    bench = _bench()
    suite = tmp_path / "suite.jsonl"
    rows = [{"id": f"t{i}", "prompt": f"What is {i} plus {i}?", "verifier": f"exact:{2 * i}", "split": "train"}
            for i in range(6)]
    rows += [{"id": f"q{i}", "prompt": f"Say something about {i}.", "verifier": "regex:(?s).*[aeiou].*",
              "split": "test"} for i in range(8)]
    suite.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "aa"
    argv = ["--model", "local:tiny", "--models-dir", str(tmp_path / "models"), "--suites", str(suite),
            "--retrains", "3", "--out", str(out), "--train-examples", "6", "--test-n", "8", "--quiet"]
    results = bench.main(argv)

    assert results["train_examples_distinct"] == 6 and results["test_items"] == 8
    assert [a["seed"] for a in results["adapters"]] == [0, 1, 2]
    assert {a["examples"] for a in results["adapters"]} == {6}
    weights = [load_file(str(out / f"seed{k}" / "train" / "adapter" / "adapter_model.safetensors"))
               for k in range(3)]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][name], weights[1][name]) for name in weights[0]), \
        "the train seed did not change the adapter"

    # The counts are the gate's own decisions on the cached scores, pair by pair.
    scores = [{s: SuiteScores.model_validate(row) for s, row in json.loads(
        (out / f"seed{k}" / "scores.json").read_text()).items()} for k in range(3)]
    pairs = [(a, b) for a in range(3) for b in range(3) if a != b]
    for label, rule in (("gate", GateConfig()), ("no_test", GateConfig(level=1.0))):
        expected = [f"seed{a}->seed{b}" for a, b in pairs
                    if compare(scores[a], scores[b], test_suites=[str(suite)], holdout_suites=[], config=rule,
                               baseline_name="x").passed]
        assert results[f"{label}_pairs"]["decisions"] == 6 and results[f"{label}_pairs"]["promoted"] == expected
        assert results[f"{label}_pairs"]["promotions"] == len(expected)
        assert results[f"{label}_disjoint"]["decisions"] == 1
        low, high = results[f"{label}_pairs"]["ci95"]
        assert 0.0 <= low <= results[f"{label}_pairs"]["rate"] <= high <= 1.0
    assert results["gate_pairs"]["promotions"] <= results["no_test_pairs"]["promotions"]
    sweep = {(row["level"], row["min_improvement"]): row["promotions"] for row in results["sweep_pairs"]}
    assert sweep[(0.05, 0.01)] == results["gate_pairs"]["promotions"]
    assert sweep[(0.01, 0.05)] <= sweep[(0.01, 0.01)] <= sweep[(0.05, 0.01)]

    stamps = {k: (out / f"seed{k}" / "train" / "train_result.json").stat().st_mtime_ns for k in range(3)}
    again = bench.main(argv)
    assert {k: (out / f"seed{k}" / "train" / "train_result.json").stat().st_mtime_ns for k in range(3)} == stamps
    assert again["gate_pairs"] == results["gate_pairs"] and again["adapters"] == results["adapters"]
    with pytest.raises(SystemExit, match="other settings"):
        bench.main([*argv[:-2], "9", "--quiet"])  # another --test-n on the same --out


def test_clopper_pearson_matches_known_intervals() -> None:
    bench = _bench()
    low, high = bench.clopper_pearson(3, 30)
    assert abs(low - 0.0211) < 1e-4 and abs(high - 0.2653) < 1e-4
    assert bench.clopper_pearson(0, 30) == (0.0, pytest.approx(1 - 0.025 ** (1 / 30)))
    assert bench.clopper_pearson(30, 30) == (pytest.approx(0.025 ** (1 / 30)), 1.0)
