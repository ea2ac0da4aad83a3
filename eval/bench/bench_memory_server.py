"""Benchmark procedural memory on a Chroma server under concurrent writers.

Starts a real ``chroma run`` on a free loopback port, then for each writer count (default 1, 4, 8) starts that
many processes that record episodes with :meth:`ProceduralMemory.after_episode` (record, counter updates on two
shared entries under the server lock, cap), while this process times retrieval queries
(:meth:`ChromaStore.query_vector`, k=5, unfiltered; one every ``--query-pause`` s) against the same server.
Prints episodes recorded per second (all writers together, from the first writer's start to the last one's end,
imports excluded) and the p50/p95 query latency while they write. Vectors come from
:class:`~procmem.memory.HashingEmbedder`.

    .venv/bin/python eval/bench/bench_memory_server.py [--writers 1,4,8] [--episodes 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from procmem.core.machine import load_average

__all__ = ["main"]

_WRITER = textwrap.dedent("""
    import json, sys, time
    from procmem.core import Attempt, Episode, Task, Verdict
    from procmem.memory import ChromaStore, HashingEmbedder, ProceduralMemory

    url, name, n, shared = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
    with ChromaStore.remote(url, HashingEmbedder()) as store:
        memory = ProceduralMemory(store)
        start = time.time()
        for i in range(n):
            task = Task(id=f"{name}-{i}", prompt=f"What is {i} + {len(name) + i}? ({name})", verifier="exact:1",
                        suite="bench")
            memory.after_episode(Episode(task=task, attempts=(Attempt("1", Verdict(True, 1.0, "")),),
                                         model_id="bench", memory_ids=(shared[i % 2], shared[(i + 1) % 2])))
        print(json.dumps({"start": start, "end": time.time()}))
""")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", default="1,4,8", help="Writer process counts, comma-separated.")
    parser.add_argument("--episodes", type=int, default=20, help="Episodes per writer process.")
    parser.add_argument("--query-pause", type=float, default=0.02, help="Seconds between two timed queries.")
    args = parser.parse_args(argv)
    from procmem.memory import ChromaStore, HashingEmbedder, ProceduralMemory
    from procmem.memory._entries import Entry
    from procmem.memory.chroma_store import local_chroma_server

    results: dict[str, Any] = {"load_avg_start": load_average(), "runs": []}
    with (tempfile.TemporaryDirectory(prefix="procmem-bench-server-") as scratch,
          local_chroma_server(Path(scratch) / "data") as url, ChromaStore.remote(url, HashingEmbedder()) as store):
        memory = ProceduralMemory(store)
        shared = []
        for i, text in enumerate(["Add the ones digits first, then carry.", "Answer in digits only."]):
            entry = Entry(id=f"ins-shared-{i}", level="insight", kind="strategy", text=text, suite="bench",
                          split="train", policy_version="bench@base", reflector="bench@base")
            memory.write_entry(entry)
            shared.append(entry.id)
        rng = np.random.default_rng(0)
        queries = rng.normal(size=(64, store.embedder.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for count in [int(w) for w in args.writers.split(",") if w.strip()]:
            procs = [subprocess.Popen([sys.executable, "-I", "-c", _WRITER, url, f"n{count}w{j}",
                                       str(args.episodes), ",".join(shared)], stdout=subprocess.PIPE, text=True)
                     for j in range(count)]
            times: list[float] = []
            while any(p.poll() is None for p in procs):
                start = time.perf_counter()
                store.query_vector("experience", queries[len(times) % len(queries)], k=5)
                times.append(time.perf_counter() - start)
                time.sleep(args.query_pause)  # a reader, not a flood: the writers need the server too
            spans = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
            run = {"writers": count, "episodes": count * args.episodes,
                   "episodes_per_s": round(count * args.episodes / wall, 1),
                   "query_p50_ms_while_writing": _ms(times, 50), "query_p95_ms_while_writing": _ms(times, 95),
                   "queries": len(times), "entries_after": store.count("experience")}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    results["load_avg_end"] = load_average()
    print(json.dumps(results, sort_keys=True))
    return results


def _ms(times: list[float], pct: int) -> float | None:
    return round(float(np.percentile(times, pct)) * 1000, 2) if times else None


if __name__ == "__main__":
    main()
