"""Benchmark the CLI's start-up: the commands a user runs often must answer at once.

Times, as whole processes (median of ``--runs`` after one warm-up run, so the file cache is warm):

- ``procmem --help`` (target under 1 s);
- ``procmem memory stats`` on a home holding ``--episodes`` recorded episodes (target under 2 s);
- ``procmem verify`` of one code answer, sandboxed (target under 2 s);

and, as the baseline measured in the same process, a bare interpreter start (``python -c pass``): each
command's ratio to it is what the CLI adds on top of Python itself, which holds when the machine's speed
drifts. It also checks that none of these commands imported torch, transformers, sentence-transformers
or litellm.

The home is built once (``--home DIR`` keeps it for later runs): ``--episodes`` episodes over the
built-in arithmetic suite, one or two attempts each, recorded through ``open_memory`` with the default
MiniLM embedder, exactly as ``procmem solve`` records them.

    .venv/bin/python eval/bench/bench_cli.py [--episodes 1000] [--runs 5] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_home", "main"]

_HEAVY = ("torch", "transformers", "sentence_transformers", "litellm")
_TARGETS_S = {"help": 1.0, "memory_stats": 2.0, "verify_code": 2.0}
_CODE_ANSWER = "```python\ndef reverse_string(s: str) -> str:\n    return s[::-1]\n```"
# Runs one command in-process, then names the heavy modules it imported (on stderr's last line).
_PROBE = ("import sys\nfrom procmem.cli import app\ntry:\n    app(sys.argv[1:], standalone_mode=False)\n"
          "finally:\n    print('heavy:', ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n")


def build_home(root: Path, episodes: int) -> int:
    """Record ``episodes`` episodes of the built-in arithmetic suite into the memory under ``root`` (kept
    if it already holds that many); returns how many the memory holds."""
    from procmem.core import Attempt, Episode, Home, Verdict
    from procmem.memory import open_memory
    from procmem.tasks import load_suite

    home = Home(root).ensure()
    memory = open_memory(home.chroma)
    try:
        held = memory.stats()["experience"]
        if held >= episodes:
            return held
        tasks = load_suite("builtin:arith", split="train")
        batch: list[Episode] = []
        for index in range(held, episodes):
            task = tasks[index % len(tasks)]
            wrong = Attempt(answer=str(index), verdict=Verdict(passed=False, score=0.0, feedback="not the answer"))
            right = Attempt(answer="ok", verdict=Verdict(passed=True, score=1.0))
            batch.append(Episode(task=task, attempts=(wrong, right) if index % 3 else (right,), model_id="bench"))
            if len(batch) == 200:
                memory.record_many(batch)
                batch = []
        memory.record_many(batch)
        return memory.stats()["experience"]
    finally:
        memory.close()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as scratch:
        root = Path(args.home) if args.home else Path(scratch) / "home"
        started = time.perf_counter()
        held = build_home(root, args.episodes)
        build_s = time.perf_counter() - started
        task_file = Path(scratch) / "code_task.jsonl"
        task_file.write_text(json.dumps(_code_task()) + "\n")
        commands = {
            "help": ["--help"],
            "memory_stats": ["--home", str(root), "memory", "stats"],
            "verify_code": ["--home", str(root), "verify", "--task", str(task_file), "--answer", _CODE_ANSWER],
        }
        baseline = _timed([sys.executable, "-c", "pass"], args.runs)
        results: dict[str, Any] = {"episodes": held, "home_build_s": round(build_s, 1), "runs": args.runs,
                                   "python_start_s": _summary(baseline)}
        for name, command in commands.items():
            times = _timed([sys.executable, "-m", "procmem.cli", *command], args.runs)
            results[name] = {**_summary(times), "target_s": _TARGETS_S[name],
                             "ratio_to_python_start": round(statistics.median(times) / statistics.median(baseline), 1),
                             "heavy_imports": _heavy_imports(command)}
    print(json.dumps(results))
    return results


def _code_task() -> dict[str, Any]:
    from procmem.tasks import load_suite

    task = next(t for t in load_suite("builtin:code", split="train") if t.id == "code/reverse_string")
    return {key: value for key, value in task.to_dict().items() if key != "suite"}  # a task file's fields


def _timed(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, capture_output=True, check=True)  # warm-up: file cache, bytecode
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3)}


def _heavy_imports(command: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=_HEAVY), *command], capture_output=True,
                          text=True, check=True)
    line = done.stderr.strip().splitlines()[-1]
    return [name for name in line.removeprefix("heavy:").strip().split(",") if name]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000, help="Episodes in the memory that stats counts.")
    parser.add_argument("--runs", type=int, default=5, help="Timed runs per command (after one warm-up).")
    parser.add_argument("--home", default=None, help="Build (or reuse) the home here instead of a temporary one.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
