"""One process of the concurrent-load test (tests/memory/test_memory_load.py); not a test module itself.

    python -I memory_load_worker.py ROLE WHERE NAME N

ROLE is ``writer`` (records N episodes, each using two of the shared entries, so its counters are
updated), ``reflector`` (writes N insights that merge into the shared ones, plus N new ones) or
``distill`` (reads the passed train episodes N times, as distillation does). WHERE is a Chroma server URL
or an embedded memory directory. Prints one JSON line: what it did, for the test to check against.
"""

from __future__ import annotations

import json
import sys
import time

from procmem.core import Attempt, Episode, Task, Verdict
from procmem.memory import ChromaStore, HashingEmbedder, MemoryConfig, ProceduralMemory
from procmem.memory._entries import Entry, entry_id
from procmem.memory.config import HygieneConfig

SHARED = [("insight", "strategy", "Add the ones digits first, then the tens, and carry."),
          ("insight", "lesson", "The answer was written in words: answer in digits only."),
          ("insight", "strategy", "Read the question twice and answer exactly what it asks."),
          ("pattern", "pattern", "Answer with the final number only, written in digits.")]
FRESH = ["Check the units before you answer.", "Count letters one at a time, pointing at each.",
         "Reverse the word letter by letter from its end.", "Convert each digit by its place value, then sum."]
"""Advice unlike each other and unlike SHARED, so that each is added, not merged."""
POLICY = "load@base"
CONFIG = MemoryConfig(hygiene=HygieneConfig(retire_min_uses=1_000_000, stale_failures=1_000_000))


def shared_entry(index: int, *, anchor: str = "p-shared") -> Entry:
    level, kind, text = SHARED[index]
    return Entry(id=entry_id(level, kind, "train", anchor, text), level=level, kind=kind,
                 text=text, suite="load", split="train", policy_version=POLICY, reflector=POLICY,
                 problem=anchor if level == "insight" else "", problem_ids=(anchor,))


def _episode(name: str, i: int) -> Episode:
    passed = i % 3 != 0
    task = Task(id=f"{name}-{i}", prompt=f"What is {i} + {len(name) * 7 + i}? (from {name})", verifier="exact:1",
                suite="load")
    uses = [SHARED_IDS[i % 4], SHARED_IDS[(i + 1) % 4]]
    return Episode(task=task, attempts=(Attempt("1", Verdict(passed, float(passed), "")),), model_id="load",
                   memory_ids=tuple(uses))


SHARED_IDS = [shared_entry(i).id for i in range(len(SHARED))]


def main(role: str, where: str, name: str, n: int) -> dict[str, object]:
    open_store = ChromaStore.remote if where.startswith("http") else ChromaStore.embedded
    with open_store(where, HashingEmbedder()) as store:
        memory = ProceduralMemory(store, CONFIG)
        if role == "writer":
            counts: dict[str, list[int]] = {i: [0, 0] for i in SHARED_IDS}
            for i in range(n):
                episode = _episode(name, i)
                done = memory.after_episode(episode)
                assert done.recorded and sorted(done.counted) == sorted(episode.memory_ids), done
                for used in episode.memory_ids:
                    counts[used][0 if episode.passed else 1] += 1
            return {"role": role, "episodes": [f"{name}-{i}" for i in range(n)], "counts": counts}
        if role == "reflector":
            merged: dict[str, list[str]] = {i: [] for i in SHARED_IDS}
            for i in range(n):
                index = i % len(SHARED)
                again = shared_entry(index, anchor=f"p-{name}-{i}")  # same text, new problem: merges
                assert memory.write_entry(again) == "merged"
                merged[SHARED_IDS[index]].append(again.id)
                fresh = Entry(id=f"ins-{name}-{i}", level="insight", kind="strategy", suite="load", split="train",
                              text=FRESH[i % len(FRESH)], policy_version=POLICY,
                              reflector=POLICY, problem=f"p-{name}-{i}", problem_ids=(f"p-{name}-{i}",))
                memory.write_entry(fresh)
            return {"role": role, "merged": merged}
        if role == "distill":
            seen = []
            for _ in range(n):
                episodes = memory.episodes(split="train", passed=True)
                assert len({e.id for e in episodes}) == len(episodes), "an episode was read twice"
                seen.append(len(episodes))
            assert seen == sorted(seen), f"passed episodes went missing while reading: {seen}"
            return {"role": role, "seen": seen}
        raise SystemExit(f"unknown role {role!r}: use writer, reflector or distill")


if __name__ == "__main__":
    start = time.perf_counter()
    print(json.dumps({**main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])),
                      "seconds": round(time.perf_counter() - start, 2)}))
