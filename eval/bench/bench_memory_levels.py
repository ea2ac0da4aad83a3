"""Do memory's upper levels fill on the bundled model? (issue 15, item 1)

For each suite, in a fresh PROCMEM_HOME, exactly as a new user would:

    procmem solve --suite SUITE --n 30 --split train --attempts 3 --model local:default --json
    procmem memory reflect --model local:default --json

then counts the insights and patterns by source (reflection, verifier, operator), the reflection calls that
parsed (the grammar-constrained decode on llama.cpp; target: at least 90%), and quotes ``--quotes`` insights
verbatim, drawn with ``random.Random(--seed).sample`` from all suites' insights in (suite, id) order. The
target per suite is at least 5 insights and 1 pattern.

    nice -n 10 .venv/bin/python eval/bench/bench_memory_levels.py [--suites S ...] [--n 30] [--attempts 3]
        [--seed 0] [--quotes 10] [--keep DIR] [--json]

The last stdout line is the result as JSON with ``--json``. Expect ~3-8 min per suite on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_SUITES", "main", "run_suite"]

DEFAULT_SUITES = (
    "rg:products?min_terms=2&max_terms=2&min_digits=1&max_digits=1",
    "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1",
    "rg:letter_counting?min_words=1&max_words=3",
    "rg:gcd?min_numbers=2&max_numbers=2&min_value=1&max_value=60",
    "rg:lcm?min_numbers=2&max_numbers=2&min_value=1&max_value=40",
)
"""Easy configs the bundled base model partly solves (shared/README.md), so problems have passes and failures,
and two of the evidence experiment's suites (lcm: every attempt fails, so every reflection is a lesson)."""
_TARGET_INSIGHTS = 5
_TARGET_PATTERNS = 1
_TARGET_PARSE_RATE = 0.9


def _procmem(home: Path, *args: str) -> dict[str, Any]:
    """Run ``procmem --home HOME ARGS --json`` as a user would; its last stdout line as JSON."""
    command = [sys.executable, "-m", "procmem.cli", "--home", str(home), *args, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run_suite(suite: str, home: Path, *, n: int, attempts: int, model: str) -> dict[str, Any]:
    """Solve then reflect in ``home``; what memory holds afterwards, by level and source."""
    start = time.perf_counter()
    solved = _procmem(home, "solve", "--suite", suite, "--n", str(n), "--split", "train", "--attempts",
                      str(attempts), "--model", model)
    solve_s = time.perf_counter() - start
    start = time.perf_counter()
    reflected = _procmem(home, "memory", "reflect", "--model", model)
    reflect_s = time.perf_counter() - start
    levels: dict[str, list[dict[str, Any]]] = {}
    for level in ("insight", "pattern"):
        listed = _procmem(home, "memory", "ls", "--level", level, "--status", "active", "--limit", "100000")
        levels[level] = [{"id": r["id"], "text": r["text"], "source": r["metadata"].get("source", "reflection"),
                          "method": r["metadata"].get("method", "")} for r in listed["records"]]
    calls = reflected["calls"] + reflected.get("retries", 0)
    return {
        "suite": suite, "accuracy": solved["accuracy"], "episodes": solved["episodes_recorded"],
        "solve_s": round(solve_s, 1), "reflect_s": round(reflect_s, 1),
        "insights": len(levels["insight"]), "patterns": len(levels["pattern"]),
        "insights_by_source": dict(Counter(e["source"] for e in levels["insight"])),
        "patterns_by_source": dict(Counter(e["source"] for e in levels["pattern"])),
        "reflection_calls": calls, "constrained_calls": reflected.get("constrained_calls", 0),
        "parsed_calls": reflected.get("parsed_calls", 0),
        "parse_rate": reflected.get("parsed_calls", 0) / calls if calls else None,
        "pattern_calls": reflected["pattern_calls"], "patterns_unparseable": reflected["patterns_unparseable"],
        "rejected_items": reflected["rejected_items"],
        "meets_target": (len(levels["insight"]) >= _TARGET_INSIGHTS and len(levels["pattern"]) >= _TARGET_PATTERNS
                         and calls > 0 and reflected.get("parsed_calls", 0) / calls >= _TARGET_PARSE_RATE),
        "entries": levels,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES), help="Suite specs, one home each.")
    parser.add_argument("--n", type=int, default=30, help="Train items solved per suite.")
    parser.add_argument("--attempts", type=int, default=3, help="Most attempts per item.")
    parser.add_argument("--model", default="local:default", help="The policy and reflector.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random sample of quoted insights.")
    parser.add_argument("--quotes", type=int, default=10, help="Insights quoted verbatim.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the homes under this directory.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON on the last line.")
    args = parser.parse_args(argv)
    os.environ.setdefault("PROCMEM_MODELS_CACHE", str(Path.home() / ".cache" / "procmem" / "models"))
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-levels-"))
    rows = []
    for index, suite in enumerate(args.suites):
        home = root / f"home-{index}"
        if home.exists():
            raise SystemExit(f"{home} exists: every suite needs a fresh home (pass another --keep)")
        rows.append(run_suite(suite, home, n=args.n, attempts=args.attempts, model=args.model))
        row = rows[-1]
        print(f"{suite}: accuracy {row['accuracy']:.0%}; {row['insights']} insights {row['insights_by_source']}, "
              f"{row['patterns']} patterns {row['patterns_by_source']}; reflection calls parsed "
              f"{row['parsed_calls']}/{row['reflection_calls']} ({row['constrained_calls']} under the grammar); "
              f"solve {row['solve_s']} s, reflect {row['reflect_s']} s", flush=True)
    pool = sorted((row["suite"], e["id"], e["source"], e["text"]) for row in rows for e in row["entries"]["insight"])
    quotes = random.Random(args.seed).sample(pool, min(args.quotes, len(pool)))
    print(f"\n{len(quotes)} insights drawn with random.Random({args.seed}).sample from all {len(pool)}:")
    for suite, _, source, text in quotes:
        print(f"- [{source}, {suite.split('?')[0]}] {text}")
    reflected = [row for row in pool if row[2] == "reflection"]
    reflected_quotes = random.Random(args.seed).sample(reflected, min(args.quotes, len(reflected)))
    print(f"\n{len(reflected_quotes)} of the {len(reflected)} reflection insights, drawn the same way:")
    for suite, _, _, text in reflected_quotes:
        print(f"- [{suite.split('?')[0]}] {text}")
    load = os.getloadavg()
    total_calls = sum(r["reflection_calls"] for r in rows)
    parsed = sum(r["parsed_calls"] for r in rows)
    print(f"\nall suites: reflection calls parsed {parsed}/{total_calls}; targets met on "
          f"{sum(r['meets_target'] for r in rows)}/{len(rows)} suites; load average {load[0]:.2f}; homes in {root}")
    result = {"suites": [{k: v for k, v in r.items() if k != "entries"} for r in rows],
              "quotes": [{"suite": s, "id": i, "source": src, "text": t} for s, i, src, t in quotes],
              "reflection_quotes": [{"suite": s, "id": i, "text": t} for s, i, _, t in reflected_quotes],
              "seed": args.seed, "parse_rate": parsed / total_calls if total_calls else None,
              "loadavg_1m": load[0], "homes": str(root)}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
