"""Calibration on the DEV split only: which candidate suites the experiment should train on.

    python eval/bench/calibrate.py --config eval/configs/pmd.toml [--candidates spec,spec,...] [--n-seed 40]
                             [--out eval/results/calibration]

For each candidate suite (the config's model, answer format and token budget):

- **memory**: a fresh memory is seeded by a short collect (``--n-seed`` train-split items, the config's
  attempts) and a reflection (``reflect_max_calls`` calls), as the experiment's first round does;
- **base pass rate**: the base model answers the suite's ``n_dev`` dev items memory-free (greedy, pass@1);
- **with memory**: the same items, ``memory_k`` retrieved entries in the prompt; the difference is the
  **memory uplift** (what a teacher with memory could hand the student);
- **majority baseline**: always giving the most common gold answer of the dev items.

Dev items are the first ``n_dev`` held-out items (:func:`procmem.eval.load_splits` with ``dev_only``): no
test item is loaded, let alone scored. A suite qualifies when its majority baseline is at most 25% and
its memory uplift at least ``--min-uplift`` points; the report lists the qualifying suites by uplift.
Results go to ``OUT.json`` (one row per suite, written after each suite: a rerun skips finished suites)
and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from procmem.core import GenerationConfig, load_config
from procmem.core.fileio import atomic_write_text, read_json, write_json

DEFAULT_CANDIDATES = (
    "rg:products?min_digits=1&max_digits=2",
    "rg:chain_sum?min_terms=2&max_terms=2&min_digits=2&max_digits=2",
    "rg:leg_counting?min_animals=2&max_animals=3&max_instances=3",
    "rg:base_conversion?min_base=2&max_base=10&min_value=1&max_value=63",
    "rg:gcd?min_numbers=2&max_numbers=2&min_value=1&max_value=60",
    "rg:word_sorting?min_words=3&max_words=3",
    "rg:basic_arithmetic?min_terms=2&max_terms=3&min_digits=1&max_digits=2",
)
MAX_MAJORITY = 0.25


def _majority(tasks: list[Any]) -> tuple[str | None, float]:
    from procmem.verifiers import build_verifier, reference_answer

    golds = [g for g in map(reference_answer, tasks) if g is not None]
    if not golds:
        return None, 0.0
    answer = Counter(golds).most_common(1)[0][0]
    return answer, sum(build_verifier(t).verify(answer).passed for t in tasks) / len(tasks)


def calibrate_suite(config: Any, suite: str, n_seed: int, home: Any) -> dict[str, Any]:
    """One candidate's row (see the module docstring)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from procmem.agent import BATCH, AgentSession, score_tasks
    from procmem.core.keys import policy_version
    from procmem.eval.experiment import _prepared, load_splits
    from procmem.llm import Limits, opened_policy
    from procmem.memory import default_embedder, open_memory
    from procmem.tasks import load_suite
    from procmem.verifiers import build_verifier

    cfg = config.model_copy(update={"train_suites": (suite,), "holdout_suites": ()})
    started = time.perf_counter()
    dev = load_splits(cfg, dev_only=True).dev[suite]
    train = _prepared(cfg, load_suite(suite, split="train", n=n_seed, check=build_verifier))
    # closed after each suite: main() calibrates one suite after another, and an open llama.cpp engine keeps ~0.8 GB
    with opened_policy(home, model=cfg.session.model, adapter="none", limits=Limits(max_batch_size=BATCH)) as llm:
        generation = GenerationConfig(max_tokens=cfg.session.generation.max_tokens, temperature=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            memory = open_memory(Path(tmp) / "memory", embedder=default_embedder())
            try:
                settings = cfg.session.model_copy(update={"generation": generation})
                with AgentSession(llm, settings, memory=memory) as session:
                    collected = session.solve(train, checkpointer=InMemorySaver(), run_id="calibrate")
                reflection = memory.reflect(llm, max_calls=cfg.reflect_max_calls)
                stats = dict(memory.stats())
                free = score_tasks(llm, {suite: dev}, generation)[suite]
                remembered = score_tasks(llm, {suite: dev}, generation, memory_k=cfg.session.memory_k,
                                         retriever=memory.retriever(policy=policy_version(llm)))[suite]
            finally:
                memory.close()
    answer, majority = _majority(dev)
    base = sum(i.passed for i in free) / len(dev)
    with_memory = sum(i.passed for i in remembered) / len(dev)
    return {"suite": suite, "n_dev": len(dev), "n_seed": len(train), "collect_accuracy": collected.accuracy,
            "reflection": reflection.to_dict(), "memory_stats": stats, "base": base, "with_memory": with_memory,
            "uplift": with_memory - base, "majority": majority, "majority_answer": answer,
            "answered": sum(bool(i.answer) for i in free) / len(dev),
            "examples": [{"answer": i.answer, "passed": i.passed} for i in remembered[:3]],
            "seconds": time.perf_counter() - started}


def _markdown(rows: list[dict[str, Any]], config: Any, min_uplift: float, command: str) -> str:
    chosen = sorted((r for r in rows if r["majority"] <= MAX_MAJORITY and r["uplift"] >= min_uplift),
                    key=lambda r: -r["uplift"])
    lines = ["# Calibration on the dev split", "",
             f"- command: `{command}`",
             f"- model {config.session.model}; answer format `{config.answer_format}`, "
             f"{config.session.generation.max_tokens} tokens; memory_k {config.session.memory_k}; "
             f"attempts {config.session.attempts}; reflection calls {config.reflect_max_calls}",
             "- dev items: the first n_dev held-out items of each suite (never a test item); memory seeded by a "
             "collect on n_seed train items and a reflection", "",
             "| suite | n dev | base (memory-free) % | with memory % | memory uplift (points) | majority % | "
             "answered % | seed collect % | insights / patterns | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        stats = r["memory_stats"]
        lines.append(f"| `{r['suite']}` | {r['n_dev']} | {100 * r['base']:.1f} | {100 * r['with_memory']:.1f} | "
                     f"{100 * r['uplift']:+.1f} | {100 * r['majority']:.1f} | {100 * r['answered']:.0f} | "
                     f"{100 * r['collect_accuracy']:.0f} | {stats.get('insight', 0)} / {stats.get('pattern', 0)} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"Rule: majority baseline <= {100 * MAX_MAJORITY:.0f}% and memory uplift >= {100 * min_uplift:.0f} "
              "points on dev; ranked by uplift.", "",
              "Chosen: " + (", ".join(f"`{r['suite']}`" for r in chosen) or "none qualifies"), ""]
    return "\n".join(lines)


def main() -> None:
    import sys

    from procmem.core import Home
    from procmem.eval.config import EvalConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="experiment config (model, format, budget)")
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES), help="comma-separated suite specs")
    parser.add_argument("--n-seed", type=int, default=40, help="train items the seeding collect solves")
    parser.add_argument("--min-uplift", type=float, default=0.05, help="least memory uplift (fraction) to qualify")
    parser.add_argument("--out", type=Path, default=Path("eval/results/calibration"), help="writes OUT.json, OUT.md")
    args = parser.parse_args()
    config = load_config(EvalConfig, args.config)
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    rows: list[dict[str, Any]] = read_json(json_path)["rows"] if json_path.exists() else []
    done = {r["suite"] for r in rows}
    for suite in [s.strip() for s in args.candidates.split(",") if s.strip()]:
        if suite in done:
            continue
        row = calibrate_suite(config, suite, args.n_seed, Home.resolve())
        rows.append(row)
        print(f"{suite}: base {row['base']:.2f} with memory {row['with_memory']:.2f} majority {row['majority']:.2f} "
              f"({row['seconds']:.0f} s)", flush=True)
        write_json(json_path, {"rows": rows})
        atomic_write_text(md_path, _markdown(rows, config, args.min_uplift, " ".join(["python", *sys.argv])))


if __name__ == "__main__":
    main()
