"""Benchmark the web console (``/ui`` of ``procmem serve``) on a home of real size: 100k episodes in the call log and
10k memory entries.

Builds the home once (``--home DIR`` keeps it for later runs):

- the call log: ``--calls`` calls written through :meth:`procmem.serve.calllog.CallLog.record` (the gateway's own
  write, so the console's columns and indexes are filled as in production), spread over the last 30 days, in 50
  sessions, answered by ``base``, ``v1`` or ``v2``; a third name a verifier (judged), a fifth get feedback
  (a correction for half of those);
- the memory: ``--entries`` insights written to the home's Chroma with MiniLM embeddings (the store's own embedder,
  batched), a tenth retired, and 1,000 recorded episodes.

Then starts a real ``procmem serve --model local:tiny`` on it (no keys: loopback) and times, over HTTP with a warm
server, ``--requests`` requests of each page after two warm-up requests:

- ``episodes``: ``/ui/episodes`` (the newest 50, with the count), and ``episodes_filtered`` (a session and a verdict);
- ``episodes_deep``: a page far back, through the keyset cursor;
- ``memory_search``: ``/ui/memory?q=...`` (a different query each time: the query is embedded by MiniLM, then the
  store's similarity search), and ``memory_browse`` (a page of the insight level);
- ``overview``: ``/ui/`` (totals, the last 24 h, memory counts per level, adapter and schedule).

Each page's first request (``first_ms``, not in the percentiles) pays what the console caches: the memory counts
per level and the learning curve are recomputed in the background once older than ``2 * poll_s`` (at least 5 s),
so later requests never wait for them.

Prints the figures as JSON and writes ``eval/results/bench/bench_ui.json``. Target: p95 < 300 ms for the episode list,
the memory search and the overview.

    .venv/bin/python eval/bench/bench_ui.py [--calls 100000] [--entries 10000] [--requests 40] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from procmem.testing import ServeProcess

__all__ = ["build_home", "main"]

_TARGET_MS = 300.0
_RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "bench_ui.json"
_VERBS = ("adding", "multiplying", "counting", "sorting", "reversing", "comparing", "dividing", "rounding",
          "parsing", "summing")
_NOUNS = ("digits", "letters", "words", "fractions", "dates", "lists", "columns", "primes", "carries", "units")
_ADVICE = ("check the last digit twice", "write the intermediate result", "answer with the number alone",
           "count from the right", "keep the sign", "line up the place values", "reduce the fraction first",
           "restate the question", "drop the trailing words", "verify by the reverse operation")


def build_home(root: Path, calls: int, entries: int) -> dict[str, Any]:
    """The benchmark home under ``root`` (reused when it already holds the sizes asked for)."""
    from procmem.core import Attempt, Episode, Home, Task, Verdict
    from procmem.memory import open_memory
    from procmem.memory._entries import Entry, entry_id
    from procmem.memory.embedding import embed_array
    from procmem.serve.app import calls_path
    from procmem.serve.calllog import CallLog, CallRecord

    home = Home(root).ensure()
    timings: dict[str, Any] = {}
    log = CallLog(calls_path(home))
    rng = random.Random(0)
    try:
        held = log.count()
        started = time.perf_counter()
        now = datetime.now(timezone.utc)
        for index in range(held, calls):
            at = (now - timedelta(seconds=30 * 86400 * (calls - index) / calls)).isoformat(timespec="milliseconds")
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            verifier = f"numeric:{a + b}" if index % 3 == 0 else ""
            call = CallRecord(
                id=f"bench-{index:06d}", tenant="default", status="complete", model_id="tiny",
                adapter_version=(None, "v1", "v2")[min(2, 3 * index // calls)],
                messages=[{"role": "user", "content": f"What is {a} + {b}?"}], prompt=f"Question: What is {a} + {b}?",
                response=str(a + b + (index % 4 == 0)), finish_reason="stop", usage={"prompt_tokens": 12,
                                                                                    "completion_tokens": 3},
                latency_ms=rng.uniform(80, 900), started_at=at, finished_at=at, session_id=f"user-{index % 50}",
                task_id=f"sum-{a}-{b}", verifier=verifier,
                verdict={"passed": index % 4 != 0, "score": float(index % 4 != 0), "feedback": "", "details": {}}
                if verifier else None)
            log.record(call)
            if index % 5 == 1:
                body = {"correction": str(a + b)} if index % 10 == 1 else {"passed": index % 4 != 0}
                log.add_feedback("default", call.id, f"fb-{index}", body)
            if index % 10_000 == 0 and index:
                print(f"  call log: {index:,} calls", file=sys.stderr, flush=True)
        timings["calls_written"] = max(0, calls - held)  # 0: a home kept from an earlier run (--home)
        timings["calls_build_s"] = round(time.perf_counter() - started, 1)
        timings["calls"] = log.count()
    finally:
        log.close()
    memory = open_memory(home.chroma)
    try:
        held = memory.store.count("insight")
        started = time.perf_counter()
        batch: list[Entry] = []
        for index in range(held, entries):
            text = (f"When {rng.choice(_VERBS)} {rng.choice(_NOUNS)} of {rng.randint(2, 40)} items, "
                    f"{rng.choice(_ADVICE)}; then {rng.choice(_ADVICE)} (case {index}).")
            stamp = (datetime.now(timezone.utc) - timedelta(minutes=index)).isoformat(timespec="milliseconds")
            batch.append(Entry(id=entry_id("insight", "strategy", "train", f"bench:{index}", text), level="insight",
                               kind="strategy", text=text, suite="serve", split="train", policy_version="tiny@base",
                               reflector="tiny@base", problem=f"p{index}", problem_ids=(f"p{index}",),
                               source_episode_ids=(f"bench-{index:06d}",), created_at=stamp, updated_at=stamp,
                               helpful=rng.randint(0, 9), harmful=rng.randint(0, 3), uses=rng.randint(0, 12),
                               status="retired" if index % 10 == 0 else "active"))
            if len(batch) == 500 or index == entries - 1:
                records = [e.to_record() for e in batch]
                memory.store.upsert_vectors(records, embed_array(memory.store.embedder, [r.text for r in records]))
                batch = []
                print(f"  memory: {index + 1:,} entries", file=sys.stderr, flush=True)
        if memory.store.count("experience") < 1000:
            tasks = [Task(id=f"t{i}", prompt=f"What is {i} + {i + 1}?", verifier=f"numeric:{2 * i + 1}",
                          suite="serve") for i in range(1000)]
            memory.record_many([Episode(task=t, attempts=(Attempt(t.verifier.split(":")[1],
                                                                  Verdict(passed=True, score=1.0)),),
                                        model_id="tiny", id=f"bench-{i:06d}") for i, t in enumerate(tasks)])
        timings["entries_written"] = max(0, entries - held)
        timings["memory_build_s"] = round(time.perf_counter() - started, 1)
        timings["entries"] = memory.store.count("insight")
    finally:
        memory.close()
    return timings


def _time(client: Any, urls: Sequence[str]) -> dict[str, Any]:
    times, first = [], 0.0
    for index, url in enumerate(urls):
        started = time.perf_counter()
        response = client.get(url)
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        if index == 0:
            first = elapsed
        if index >= 2:  # two warm-up requests
            times.append(elapsed)
    ordered = sorted(times)
    return {"n": len(times), "first_ms": round(first, 1), "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1),
            "max_ms": round(ordered[-1], 1)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import httpx

    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as scratch:
        root = Path(args.home) if args.home else Path(scratch) / "home"
        built = build_home(root, args.calls, args.entries)
        server = ServeProcess(root, log=Path(scratch) / "serve.log").start(timeout=300)
        base = server.root
        try:
            n = args.requests + 2
            rng = random.Random(1)
            with httpx.Client(base_url=base, timeout=120) as client:
                client.get("/ui/")  # the session cookie
                middle = quote((datetime.now(timezone.utc) - timedelta(days=15)).isoformat(timespec="milliseconds"))
                results = {
                    "episodes": _time(client, ["/ui/episodes"] * n),
                    "episodes_filtered": _time(client, [f"/ui/episodes?session=user-{i % 50}&verdict=passed"
                                                        for i in range(n)]),
                    "episodes_deep": _time(client, [f"/ui/episodes?before={middle}%7Cx&adapter=v1"] * n),
                    "memory_search": _time(client, [
                        f"/ui/memory?level=insight&q={rng.choice(_VERBS)}+{rng.choice(_NOUNS)}+{i}"
                        for i in range(n)]),
                    "memory_browse": _time(client, ["/ui/memory?level=insight"] * n),
                    "overview": _time(client, ["/ui/"] * n),
                }
        finally:
            server.stop()
    load = os.getloadavg()
    report = {"home": built, "requests": args.requests, "target_p95_ms": _TARGET_MS,
              "load_avg_1_5_15": [round(x, 2) for x in load], "cpus": os.cpu_count(), **results,
              "met": {name: results[name]["p95_ms"] < _TARGET_MS for name in ("episodes", "memory_search",
                                                                             "overview")}}
    print(json.dumps(report))
    if args.write:
        _RESULTS.parent.mkdir(parents=True, exist_ok=True)
        _RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="Calls (episodes) in the call log.")
    parser.add_argument("--entries", type=int, default=10_000, help="Insights in the memory.")
    parser.add_argument("--requests", type=int, default=40, help="Timed requests per page (after 2 warm-ups).")
    parser.add_argument("--home", default=None, help="Build (or reuse) the home here instead of a temp dir.")
    parser.add_argument("--no-write", dest="write", action="store_false",
                        help=f"Do not write {_RESULTS.relative_to(_RESULTS.parents[3])}.")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
