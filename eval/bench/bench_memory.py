"""Benchmark procedural memory: retrieval latency at scale against numpy brute force, and write throughput.

Measures, in one process (so the ratios compare like with like):

- retrieval latency p50/p95 of :meth:`ChromaStore.query_vector` (embedded Chroma, cosine; k=5)
  at 1k / 10k / 100k entries, unfiltered and with the worked-example filter
  (``split=train, passed=True``, which ~half the entries match), against exact numpy brute force
  (one matrix-vector product + argpartition) over the very same vectors, as a ratio; beside every
  latency the store's raw recall@k against the exact answer (ties not counted: a hit counts only if it
  is one of the exact top k ids). ``search`` says which path answered: ``exact`` (the in-process mirror
  of a level up to ``EXACT_MAX`` entries) or ``hnsw``;
- write throughput in episodes/s: :meth:`ExperienceMemory.record_many` in batches and
  :meth:`ProceduralMemory.after_episode` one at a time (record, counters, cap: what ``procmem solve``
  pays per episode), with the real MiniLM embedder, and store-only (precomputed vectors) for comparison;
- the agent's whole retrieval (:meth:`ProceduralRetriever.retrieve`: embed the question with MiniLM,
  worked examples, insights of the nearest problems, patterns, budget, rendering) on that memory.

Vectors (``--vectors``): ``random`` unit vectors of dimension 384 (MiniLM's), the hard case for HNSW
and free of ties; or ``prompts``: :class:`~procmem.memory.HashingEmbedder` over distinct synthetic
reasoning-gym-like prompts (embedding 100k prompts with MiniLM would take minutes and measure the
embedder, not the store). Lexical hashing of templated prompts makes many exact similarity ties (a tie
at rank 5/6 in 59 of 200 queries at 30k entries), which caps raw recall whatever the index does; the
``ties_counted`` column gives such a hit credit. Query
latency excludes embedding the query (MiniLM: a few ms per prompt, cached when repeated). Target
(issue 3): p95 < 10 ms at 100k entries.

    .venv/bin/python eval/bench/bench_memory.py [--sizes 1000,10000,100000] [--queries 200] [--episodes 256]
        [--vectors random|prompts|minilm] [--ef-search 100,200,400] [--keep-indexes] [--skip-writes]
    .venv/bin/python eval/bench/bench_memory.py --grow-to 1000000 --budget-min 20   # the largest size in 20 minutes

``--agent-sizes 10000,100000`` measures instead the agent's whole retrieval on realistic texts (issue 26): a memory
of that many episodes over distinct problems from 20 reasoning-gym suites (train and test split) and the builtin
suites, three in four with a paraphrase that is a problem of its own (close in embedding, different in text), each
problem solved 1-12 times (some passed, some failed: repeated solves are what made the old retrieval widen its
search), with insights on every 8th problem, patterns and suite-scoped operator entries; MiniLM vectors (cached under
--cache-dir), written through ``ChromaStore.upsert_vectors`` so that the derived indexes are kept as in use. Then
``ProceduralRetriever.retrieve(task, 3)`` (embed the question, nearest problems, worked examples, insights, patterns,
scoped entries, budget, rendering) for held-out test questions and for train questions the memory holds, p50/p95 wall
and CPU, and again with the question's vector cached (``retrieve_store``: everything but the embedding); and raw
recall@5 of each search against exact search over the same vectors (ties not counted; the
``ties_counted`` figures credit a hit as similar as the exact 5th). ``widening_examples`` times the search the
retrieval made before the indexes (filtered searches of the level, widened until k problems are found) on the same
store, as the baseline. Writes ``eval/results/bench/bench_memory_agent.json`` (``--out``).

    nice -n 10 .venv/bin/python eval/bench/bench_memory.py --agent-sizes 10000,100000 [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from procmem.core.fileio import write_json
from procmem.core.machine import load_average

__all__ = ["main"]

_WORDS = ["apple", "river", "garden", "window", "yellow", "planet", "silver", "forest", "candle", "orange",
          "bridge", "summer", "pencil", "rabbit", "cloud", "engine", "marble", "violin", "desert", "ladder"]
_TEMPLATES = [
    lambda r: f"What is {r.randint(10, 999)} + {r.randint(10, 999)}?",
    lambda r: f"What is {r.randint(2, 99)} * {r.randint(2, 99)}?",
    lambda r: f"How many times does the letter '{r.choice('aeiourst')}' appear in the text: "
              f"\"{' '.join(r.sample(_WORDS, 3))}\"?",
    lambda r: f"Spell this word backward (example: sun -> nus): {r.choice(_WORDS)}",
    lambda r: f"Reverse this list of words: {', '.join(r.sample(_WORDS, 4))}",
    lambda r: f"Convert the base-{r.randint(2, 9)} number {r.randint(1, 500)} to base-10",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    results: dict[str, Any] = {"load_avg_start": load_average(), "k": args.k, "queries": args.queries, "latency": []}
    if args.agent_sizes:
        results["cpus"] = os.cpu_count()
        with tempfile.TemporaryDirectory(prefix="procmem-bench-memory-agent-") as scratch:
            results["agent"] = _agent(Path(scratch), args)
        results["load_avg_end"] = load_average()
        if args.out:
            write_json(args.out, results)
        print(json.dumps(results, sort_keys=True))
        return results
    if args.grow_to:
        with tempfile.TemporaryDirectory(prefix="procmem-bench-memory-grow-") as scratch:
            results["grown"] = _grow(Path(scratch) / "chroma", args)
        results["load_avg_end"] = load_average()
        print(json.dumps(results, sort_keys=True))
        return results
    with tempfile.TemporaryDirectory(prefix="procmem-bench-memory-") as scratch:
        for size in args.sizes:
            results["latency"].append(_latency(Path(scratch) / f"chroma-{size}", size, args))
            print(json.dumps(results["latency"][-1]), flush=True)
        if not args.skip_writes:
            results["writes"] = _writes(Path(scratch), args.episodes, args.retrieval_episodes)
    results["load_avg_end"] = load_average()
    _print_table(results)
    print(json.dumps(results, sort_keys=True))
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="Entry counts, comma-separated.")
    parser.add_argument("--queries", type=int, default=200, help="Queries per measurement.")
    parser.add_argument("--k", type=int, default=5, help="Neighbours per query.")
    parser.add_argument("--episodes", type=int, default=256, help="Episodes for the write-throughput runs.")
    parser.add_argument("--vectors", choices=("random", "prompts", "minilm"), default="random",
                        help="Random unit vectors (no ties), hashed synthetic prompts (lexical, many ties), or MiniLM "
                             "embeddings of distinct reasoning-gym questions (realistic; cached under --cache-dir).")
    parser.add_argument("--ef-search", default="",
                        help="HNSW search beam widths to measure on the same built index, comma-separated "
                             "(default: the store's own, HNSW['ef_search']).")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/bench_memory"),
                        help="Where MiniLM vectors (--vectors minilm) and, with --keep-indexes, built indexes are kept "
                             "between runs.")
    parser.add_argument("--keep-indexes", action="store_true",
                        help="Build each index once under --cache-dir and reuse it in later runs (same vectors, size "
                             "and HNSW settings).")
    parser.add_argument("--retrieval-episodes", type=int, default=0,
                        help="Grow the memory to this many episodes (MiniLM, in batches) before timing the agent's "
                             "whole retrieval; 0: time it on the 2 x --episodes written.")
    parser.add_argument("--skip-writes", action="store_true", help="Measure retrieval latency and recall only.")
    parser.add_argument("--grow-to", type=int, default=0,
                        help="Instead of the size table: add random vectors to one store in chunks until it holds this "
                             "many or --budget-min runs out, then measure search at the size reached (item 3's run).")
    parser.add_argument("--budget-min", type=float, default=20.0,
                        help="With --grow-to: minutes of adding after which no chunk is started.")
    parser.add_argument("--agent-sizes", default="",
                        help="Instead of the size table: the agent's whole retrieval on realistic texts at these "
                             "episode counts, comma-separated (e.g. 10000,100000).")
    parser.add_argument("--out", default=str(_AGENT_RESULTS),
                        help="With --agent-sizes: where the JSON results go ('' for nowhere).")
    args = parser.parse_args(argv)
    args.agent_sizes = [int(s) for s in str(args.agent_sizes).split(",") if s.strip()]
    args.out = Path(args.out) if args.out.strip() else None
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.ef_search = [int(s) for s in str(args.ef_search).split(",") if s.strip()]
    return args


def _prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(_TEMPLATES)(rng) for _ in range(n)]


def _vectors(kind: str, n: int, seed: int, dim: int, cache_dir: Path | None = None) -> npt.NDArray[np.float32]:
    """``n`` distinct unit vectors: random, hashed distinct prompts, or MiniLM over distinct questions."""
    if kind == "random":
        vectors = np.random.default_rng(seed + 2**31).normal(size=(n, dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    if kind == "minilm":
        return _minilm_vectors(n, seed, cache_dir or Path(".cache/bench_memory"))
    from procmem.memory import HashingEmbedder

    distinct = list(dict.fromkeys(_prompts(3 * n, seed=seed)))[:n]
    if len(distinct) < n:
        raise SystemExit(f"only {len(distinct)} distinct prompts for {n} entries: use --vectors random")
    return HashingEmbedder().embed_array(distinct)


_RG_DATASETS = ("chain_sum", "products", "letter_counting", "spell_backward", "word_sequence_reversal",
                "base_conversion", "basic_arithmetic", "gcd", "lcm", "prime_factorization", "caesar_cipher",
                "number_filtering", "count_bits", "fraction_simplification", "decimal_arithmetic",
                "sentence_reordering", "calendar_arithmetic", "time_intervals", "leg_counting", "ransom_note")
"""reasoning-gym tasks whose questions are quick to generate: 20 kinds of problem, each with varied wording."""


def _questions(n: int, seed: int) -> list[str]:
    """``n`` distinct reasoning-gym questions, the datasets interleaved (seed picks the items)."""
    import reasoning_gym

    per = n // len(_RG_DATASETS) + 1
    pools = [[reasoning_gym.create_dataset(name, seed=seed * 1_000_003 + j, size=2 * per)[i]["question"]
              for i in range(2 * per)] for j, name in enumerate(_RG_DATASETS)]
    mixed = [pool[i] for i in range(2 * per) for pool in pools]
    distinct = list(dict.fromkeys(mixed))[:n]
    if len(distinct) < n:
        raise SystemExit(f"only {len(distinct)} distinct questions for {n} entries")
    return distinct


def _minilm_vectors(n: int, seed: int, cache_dir: Path) -> npt.NDArray[np.float32]:
    """MiniLM embeddings of ``n`` distinct questions, cached as .npy (embedding runs at ~20-60 texts/s on 2 busy
    cores: 10k questions take minutes, 100k an hour)."""
    from procmem.memory import default_embedder

    path = cache_dir / f"minilm-{n}-{seed}.npy"
    if path.exists():
        return np.load(path)
    start = time.perf_counter()
    vectors = default_embedder().embed_array(_questions(n, seed))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    print(json.dumps({"embedded": n, "seconds": round(time.perf_counter() - start, 1), "cached": str(path)}),
          flush=True)
    return vectors


def _latency(path: Path, size: int, args: argparse.Namespace) -> dict[str, Any]:
    from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord
    from procmem.memory.chroma_store import EXACT_MAX, HNSW

    embedder = HashingEmbedder()
    vectors = _vectors(args.vectors, size, size, embedder.dim, args.cache_dir)
    queries = _vectors(args.vectors, args.queries, -size - 1, embedder.dim, args.cache_dir)
    if args.vectors == "minilm":  # questions of the query seed may also be in the store: not new questions
        stored = {v.tobytes() for v in vectors}
        queries = np.stack([q for q in queries if q.tobytes() not in stored])
    rng = random.Random(0)
    passed = [rng.random() < 0.5 for _ in range(size)]
    records = [MemoryRecord(id=f"e{i}", level="experience", text="", metadata={"split": "train", "passed": p})
               for i, p in enumerate(passed)]
    if args.keep_indexes:
        path = args.cache_dir / "indexes" / (f"{args.vectors}-{size}-m{HNSW['max_neighbors']}"
                                              f"-efc{HNSW['ef_construction']}")
    ef_values = args.ef_search or [HNSW["ef_search"]]
    row: dict[str, Any] = {"entries": size, "vectors": args.vectors,
                           "search": "exact" if size <= EXACT_MAX else "hnsw", "hnsw": HNSW, "by_ef_search": []}
    mask = np.array(passed)
    numpy_ = _time_queries(lambda q: _brute(vectors, q, args.k, None), queries)
    numpy_f = _time_queries(lambda q: _brute(vectors, q, args.k, mask), queries)
    with ChromaStore.embedded(path, embedder) as store:
        built = store.count("experience")
        start = time.perf_counter()
        if built != size:
            if built:
                raise SystemExit(f"{path} holds {built} entries, not {size}: delete it")
            for lo in range(0, size, 5000):
                store.upsert_vectors(records[lo:lo + 5000], vectors[lo:lo + 5000])
        row["insert_s"] = round(time.perf_counter() - start, 2)
        row["reused_index"] = built == size
        where: dict[str, str | int | float | bool] = {"split": "train", "passed": True}
        for ef in ef_values:
            store.set_ef_search("experience", ef)
            chroma = _time_queries(lambda q: [h.record.id for h in store.query_vector("experience", q, k=args.k)],
                                   queries)
            chroma_f = _time_queries(lambda q: [h.record.id for h in store.query_vector("experience", q, k=args.k,
                                                                                          where=where)], queries)
            measured: dict[str, Any] = {"ef_search": ef}
            for name, (chroma_t, exact_t) in {"unfiltered": (chroma, numpy_), "filtered": (chroma_f, numpy_f)}.items():
                measured[name] = _compare(vectors, queries, chroma_t, exact_t, args.k)
            row["by_ef_search"].append(measured)
        store.set_ef_search("experience", HNSW["ef_search"])
    first = row["by_ef_search"][0]
    row["unfiltered"], row["filtered"] = first["unfiltered"], first["filtered"]
    return row


def _grow(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Add random unit vectors (half of them ``passed``) in chunks of 5,000 until ``--grow-to`` or the budget, then
    time unfiltered and filtered searches at the size reached, with recall against exact search."""
    from procmem.memory import ChromaStore, HashingEmbedder, MemoryRecord
    from procmem.memory.chroma_store import HNSW

    embedder, chunk = HashingEmbedder(), 5000
    rng = random.Random(0)
    blocks: list[npt.NDArray[np.float32]] = []
    passed: list[bool] = []
    out: dict[str, Any] = {"target": args.grow_to, "budget_min": args.budget_min, "hnsw": HNSW, "progress": []}
    queries = _vectors("random", args.queries, -1, embedder.dim)
    with ChromaStore.embedded(path, embedder) as store:
        start = time.perf_counter()
        while len(passed) < args.grow_to and time.perf_counter() - start < 60 * args.budget_min:
            lo, n = len(passed), min(chunk, args.grow_to - len(passed))
            block = _vectors("random", n, lo, embedder.dim)
            flags = [rng.random() < 0.5 for _ in range(n)]
            store.upsert_vectors([MemoryRecord(id=f"e{lo + i}", level="experience", text="",
                                               metadata={"split": "train", "passed": f})
                                  for i, f in enumerate(flags)], block)
            blocks.append(block)
            passed += flags
            if len(passed) % 50_000 == 0 or len(passed) == args.grow_to:
                step = {"entries": len(passed), "minutes": round((time.perf_counter() - start) / 60, 2),
                        "load_avg": load_average()}
                out["progress"].append(step)
                print(json.dumps(step), flush=True)
        out["build_min"] = round((time.perf_counter() - start) / 60, 2)
        out["entries"] = len(passed)
        out["entries_per_s"] = round(len(passed) / (time.perf_counter() - start), 1)
        vectors = np.concatenate(blocks)
        mask = np.array(passed)
        where: dict[str, str | int | float | bool] = {"split": "train", "passed": True}
        for name, filt in (("unfiltered", None), ("filtered", where)):
            chroma = _time_queries(lambda q, w=filt: [h.record.id for h in store.query_vector(
                "experience", q, k=args.k, where=w)], queries)
            exact = _time_queries(lambda q, f=filt: _brute(vectors, q, args.k, mask if f else None), queries)
            out[name] = _compare(vectors, queries, chroma, exact, args.k)
            print(json.dumps({name: out[name]}), flush=True)
    return out


def _compare(vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32],
             chroma_t: tuple[list[float], list[list[str]]], exact_t: tuple[list[float], list[list[str]]], k: int
             ) -> dict[str, Any]:
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(chroma_t[1], exact_t[1], strict=True)])
    # Templated prompts tie a lot: a hit as similar as the exact k-th neighbour is as good as it.
    tie_recall = np.mean([_tie_recall(vectors, q, a, b) for q, a, b in zip(queries, chroma_t[1], exact_t[1],
                                                                           strict=True)])
    return {
        "chroma_p50_ms": _ms(chroma_t[0], 50), "chroma_p95_ms": _ms(chroma_t[0], 95),
        "numpy_p50_ms": _ms(exact_t[0], 50), "numpy_p95_ms": _ms(exact_t[0], 95),
        "p95_ratio_chroma_over_numpy": round(_ms(chroma_t[0], 95) / max(_ms(exact_t[0], 95), 1e-6), 2),
        "chroma_recall_at_k": round(float(recall), 3),
        "chroma_recall_at_k_ties_counted": round(float(tie_recall), 3),
    }


def _tie_recall(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32], got: list[str],
                exact: list[str]) -> float:
    sims = vectors @ query
    kth = min(float(sims[int(i[1:])]) for i in exact)
    return sum(float(sims[int(i[1:])]) >= kth - 1e-5 for i in got) / len(exact)


def _brute(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int,
           mask: npt.NDArray[np.bool_] | None) -> list[str]:
    sims = vectors @ query
    rows = np.flatnonzero(mask) if mask is not None else np.arange(len(vectors))
    top = rows[np.argpartition(-sims[rows], k - 1)[:k]]
    return [f"e{i}" for i in top[np.argsort(-sims[top])]]


def _time_queries(run: Any, queries: npt.NDArray[np.float32]) -> tuple[list[float], list[list[str]]]:
    run(queries[0])  # warm up
    times, answers = [], []
    for query in queries:
        start = time.perf_counter()
        answers.append(run(query))
        times.append(time.perf_counter() - start)
    return times, answers


def _writes(scratch: Path, n: int, retrieval_episodes: int = 0) -> dict[str, Any]:
    from procmem.core import Attempt, Episode, Task, Verdict
    from procmem.memory import ChromaStore, ProceduralMemory, default_embedder
    from procmem.memory._experiences import ExperienceMemory

    prompts = _prompts(2 * n, seed=7)
    episodes = [Episode(task=Task(id=f"t{i}", prompt=p, verifier="exact:1", suite="bench"),
                        attempts=(Attempt("1", Verdict(i % 2 == 0, float(i % 2 == 0), "")),), model_id="bench")
                for i, p in enumerate(prompts)]
    embedder = default_embedder()
    embedder.embed(["warm up"])
    out: dict[str, Any] = {"episodes": n}
    with ChromaStore.embedded(scratch / "writes", embedder) as store:
        memory = ProceduralMemory(store)
        start = time.perf_counter()
        for lo in range(0, n, 32):
            memory.record_many(episodes[lo:lo + 32])
        out["minilm_batched_32_eps"] = round(n / (time.perf_counter() - start), 1)
        start = time.perf_counter()
        for episode in episodes[n:]:
            memory.after_episode(episode)
        out["minilm_after_episode_one_at_a_time_eps"] = round(n / (time.perf_counter() - start), 1)
        more = retrieval_episodes - 2 * n
        if more > 0:
            extra = [Episode(task=Task(id=f"x{i}", prompt=p, verifier="exact:1", suite="bench"),
                             attempts=(Attempt("1", Verdict(i % 2 == 0, float(i % 2 == 0), "")),), model_id="bench")
                     for i, p in enumerate(_prompts(more, seed=9))]
            for lo in range(0, more, 256):
                memory.record_many(extra[lo:lo + 256])
        out.update(_retrieval(memory, _prompts(64, seed=8)))
    from procmem.memory import HashingEmbedder

    with ChromaStore.embedded(scratch / "writes-store-only", HashingEmbedder()) as store:
        store_only = ExperienceMemory(store)
        start = time.perf_counter()
        for episode in episodes[:n]:
            store_only.record(episode)
        out["store_only_one_at_a_time_eps"] = round(n / (time.perf_counter() - start), 1)
    return out


def _retrieval(memory: Any, questions: list[str]) -> dict[str, Any]:
    """The agent's retrieval, end to end, for new questions (their embeddings are not cached)."""
    from procmem.core import Task

    retriever = memory.retriever(policy="bench@base")
    tasks = [Task(id=f"q{i}", prompt=q, verifier="exact:1", suite="bench") for i, q in enumerate(questions)]
    retriever.retrieve(tasks[0], 3)  # warm up
    times, cpu = [], []
    for task in tasks[1:]:
        start, start_cpu = time.perf_counter(), time.process_time()
        retriever.retrieve(task, 3)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # CPU time (this process, all threads) says what a retrieval costs whatever else runs on the machine
    return {"retrieve_episodes": memory.stats()["experience"], "retrieve_p50_ms": _ms(times, 50),
            "retrieve_p95_ms": _ms(times, 95), "retrieve_cpu_p50_ms": _ms(cpu, 50), "retrieve_cpu_p95_ms": _ms(cpu, 95)}


# --- the agent's whole retrieval on realistic texts (--agent-sizes) ----------------------------------------------

_AGENT_RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench" / "bench_memory_agent.json"
_PARAPHRASES = ("Please solve this: {q}", "Question: {q}", "{q} Give only the final answer.",
                "Here is a problem for you. {q}", "I need help with this one: {q}",
                "{q} Think it through, then answer.", "Solve the following. {q}", "Quick one: {q}",
                "Can you work this out? {q}", "{q} Reply with the answer alone.")
_SOLVES = (1, 1, 2, 2, 3, 4, 6, 8, 12)
"""How many episodes one problem gets (uniform over these): repeated solves, as RFT rollouts and epochs make."""
_STRATEGIES = ("Work through it one step at a time and check each step before the next.",
               "Write the final answer alone, in the form the question asks for.",
               "Read the question twice and note every number it gives before starting.",
               "Check the answer by working backwards from it.",
               "Keep intermediate results exact; round only at the end.",
               "Count carefully, one item at a time, and recount once.")


@dataclass(frozen=True)
class _Problem:
    task_id: str
    suite: str
    split: str
    prompt: str


def _realistic_problems(seed: int) -> tuple[list[_Problem], list[_Problem]]:
    """Distinct problems (shuffled, so that any prefix mixes every suite) from 20 reasoning-gym suites (700 train and
    50 test questions each) and the builtin suites, three in four followed by a paraphrase of their own; and held-out
    test questions with paraphrases, never stored, for the queries."""
    from procmem.core.keys import problem_key
    from procmem.tasks import load_suite

    rng = random.Random(seed)
    stored, held_out = [], []
    for name in _RG_DATASETS:
        test = load_suite(f"rg:{name}", split="test", n=80)
        stored += [*load_suite(f"rg:{name}", split="train", n=700), *test[:50]]
        held_out += test[50:]
    for name in ("arith", "ledger", "code"):
        stored += load_suite(f"builtin:{name}")

    def with_paraphrases(tasks: Sequence[Any], share: float) -> list[_Problem]:
        out: list[_Problem] = []
        for task in tasks:
            out.append(_Problem(task.id, task.suite, task.split, task.prompt))
            if rng.random() < share:
                out.append(_Problem(f"{task.id}~p", task.suite, task.split,
                                    rng.choice(_PARAPHRASES).format(q=task.prompt)))
        return list({problem_key(p.prompt): p for p in out}.values())

    problems = with_paraphrases(stored, 0.75)
    rng.shuffle(problems)
    queries = with_paraphrases(held_out, 1.0)
    rng.shuffle(queries)
    return problems, queries


def _episodes(problems: Sequence[_Problem], size: int, seed: int) -> list[Any]:
    """``size`` episodes over the first problems (the same seed gives the smaller memory as a prefix of the larger)."""
    from procmem.core import Attempt, Episode, Task, Verdict

    rng = random.Random(seed)
    out: list[Any] = []
    for n, problem in enumerate(problems):
        skill = rng.random()
        task = Task(id=problem.task_id, prompt=problem.prompt, verifier="exact:1", suite=problem.suite,
                    split=problem.split)  # type: ignore[arg-type]
        for solve in range(rng.choice(_SOLVES)):
            if len(out) == size:
                return out
            tries = rng.choice((1, 1, 2, 3))
            passed = rng.random() < skill
            attempts = tuple(Attempt(f"{rng.randint(0, 9999)}", Verdict(
                passed and a == tries - 1, 1.0 if passed and a == tries - 1 else 0.0,
                "" if passed and a == tries - 1 else "expected a number in the asked form; got another value"))
                for a in range(tries))
            stamp = f"2026-01-{1 + n % 28:02d}T{solve % 24:02d}:00:00.000+00:00"
            out.append(Episode(task=task, attempts=attempts, model_id="bench", adapter_version=None,
                               id=f"ep-{rng.getrandbits(64):016x}", started_at=stamp, finished_at=stamp))
    raise SystemExit(f"only {len(out)} episodes from {len(problems)} problems; {size} asked")


def _embed_cached(texts: list[str], cache_dir: Path) -> npt.NDArray[np.float32]:
    """MiniLM vectors of ``texts``: those of texts seen in an earlier run come from the cache under ``cache_dir``
    (``agent-minilm.npy`` and the texts in ``agent-minilm.json``), the others are embedded and added to it. (Some
    reasoning-gym datasets word a few questions differently from one process to the next.)"""
    from procmem.core.fileio import read_json
    from procmem.memory import default_embedder

    vectors_path, texts_path = cache_dir / "agent-minilm.npy", cache_dir / "agent-minilm.json"
    known: dict[str, npt.NDArray[np.float32]] = {}
    if vectors_path.exists() and texts_path.exists():
        cached_texts, cached = read_json(texts_path), np.load(vectors_path)
        if len(cached_texts) == len(cached):  # else a run stopped between the two writes: start again
            known = dict(zip(cached_texts, cached, strict=True))
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        start = time.perf_counter()
        embedder = default_embedder()
        for lo in range(0, len(missing), 256):
            known.update(zip(missing[lo:lo + 256], embedder.embed_array(missing[lo:lo + 256]), strict=True))
        cache_dir.mkdir(parents=True, exist_ok=True)
        order = list(known)
        tmp = vectors_path.with_suffix(".tmp.npy")
        np.save(tmp, np.stack([known[t] for t in order]))
        os.replace(tmp, vectors_path)
        write_json(texts_path, order)
        print(json.dumps({"embedded": len(missing), "cached": len(texts) - len(missing),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)
    return np.stack([known[t] for t in texts])


def _entries(problems: Sequence[_Problem], episodes: Sequence[Any]) -> list[Any]:
    """Insights on every 8th train problem the memory holds, two patterns per suite, and one operator entry scoped to
    each suite."""
    from procmem.core.keys import problem_key
    from procmem.memory._entries import Entry, entry_id

    held = {problem_key(e.task.prompt) for e in episodes}
    out: list[Any] = []
    stamp = "2026-01-01T00:00:00.000+00:00"
    base: dict[str, Any] = {"split": "train", "policy_version": "bench@base", "reflector": "bench@base",
                            "created_at": stamp, "updated_at": stamp}
    for n, problem in enumerate(p for p in problems if p.split == "train" and problem_key(p.prompt) in held):
        if n % 8 == 0:
            key, text = problem_key(problem.prompt), _STRATEGIES[n % len(_STRATEGIES)]
            out.append(Entry(id=entry_id("insight", "strategy", "train", key, text), level="insight", kind="strategy",
                             text=text, suite=problem.suite, problem=key, problem_ids=(key,), **base))
    for n, suite in enumerate(sorted({p.suite for p in problems})):
        for j in range(2):
            text = f"On {suite} tasks: {_STRATEGIES[(n + j) % len(_STRATEGIES)]}"
            out.append(Entry(id=entry_id("pattern", "pattern", "train", suite, text), level="pattern", kind="pattern",
                             text=text, suite=suite, **base))
        text = f"Operator note for {suite}: answer in the exact format the question asks for."
        out.append(Entry(id=entry_id("insight", "strategy", "train", f"scope:{suite}", text), level="insight",
                         kind="strategy", text=text, suite=suite, scope=suite, source="operator", method="operator",
                         **base))
    return out


def _agent(scratch: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from procmem.memory import ChromaStore, InMemoryStore, ProceduralMemory, default_embedder
    from procmem.memory._experiences import _to_record

    problems, held_out = _realistic_problems(seed=26)
    largest = _episodes(problems, max(args.agent_sizes), seed=26)
    texts = sorted({e.task.prompt for e in largest})
    entries = _entries(problems, largest)
    entry_texts = sorted({e.text for e in entries})
    train_held = [p for p in problems if p.split == "train"]
    in_memory = {e.task.prompt for e in largest[:min(args.agent_sizes)]}
    query_problems = [*held_out[:args.queries // 2], *[p for p in train_held if p.prompt in in_memory][
        :args.queries - args.queries // 2]]
    random.Random(3).shuffle(query_problems)
    vectors = _embed_cached(texts, args.cache_dir)
    entry_vectors = _embed_cached(entry_texts, args.cache_dir)
    query_vectors = _embed_cached([p.prompt for p in query_problems], args.cache_dir)
    row_of = {t: i for i, t in enumerate(texts)}
    entry_row = {t: i for i, t in enumerate(entry_texts)}
    embedder = default_embedder()
    out = []
    for size in args.agent_sizes:
        episodes = largest[:size]
        records = [_to_record(e) for e in episodes]
        matrix = vectors[[row_of[e.task.prompt] for e in episodes]]
        row: dict[str, Any] = {"episodes": size, "distinct_problems": len({r.metadata["problem"] for r in records}),
                               "passed": sum(bool(r.metadata["passed"]) for r in records),
                               "load_avg_start": load_average()}
        with ChromaStore.embedded(scratch / f"chroma-{size}", embedder) as store:
            start = time.perf_counter()
            for lo in range(0, size, 2000):
                store.upsert_vectors(records[lo:lo + 2000], matrix[lo:lo + 2000])
            row["insert_s"] = round(time.perf_counter() - start, 1)
            row["insert_eps"] = round(size / (time.perf_counter() - start), 1)
            mine = _entries(problems, episodes)
            store.upsert_vectors([e.to_record() for e in mine], entry_vectors[[entry_row[e.text] for e in mine]])
            row["insights"], row["patterns"] = store.count("insight"), store.count("pattern")
            exact = InMemoryStore(embedder)
            exact.upsert_vectors(records, matrix)
            row.update(_time_agent(ProceduralMemory(store), query_problems, embedder))
            row.update(_searches(store, exact, query_vectors, query_problems, args.k))
        row["load_avg_end"] = load_average()
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _time_agent(memory: Any, problems: Sequence[_Problem], embedder: Any) -> dict[str, Any]:
    """The agent's whole retrieval per question, the question's embedding included (none is cached)."""
    from procmem.core import Task

    retriever = memory.retriever(policy="bench@base")
    warm = [Task(id=f"w{i}", prompt=f"Warm-up question number {i}?", verifier="exact:1", suite="rg:chain_sum")
            for i in range(3)]
    for task in warm:
        retriever.retrieve(task, 3)
    getattr(embedder, "_cache", {}).clear()  # the questions were embedded for the recall figures: not cached here
    times: dict[str, list[float]] = {"all": [], "held_out": [], "in_memory": [], "store": []}
    cpu: list[float] = []
    shown = []
    for n, problem in enumerate(problems):
        task = Task(id=f"q{n}" if problem.split == "test" else problem.task_id, prompt=problem.prompt,
                    verifier="exact:1", suite=problem.suite, split=problem.split)  # type: ignore[arg-type]
        start, start_cpu = time.perf_counter(), time.process_time()
        found = retriever.retrieve(task, 3)
        elapsed = time.perf_counter() - start
        cpu.append(time.process_time() - start_cpu)
        times["all"].append(elapsed)
        times["held_out" if problem.split == "test" else "in_memory"].append(elapsed)
        shown.append(sum(i.startswith("ep-") for i in found.entry_ids))  # the worked examples (episode ids)
        start = time.perf_counter()
        retriever.retrieve(task, 3)  # again, the question's vector now cached: everything but the embedding
        times["store"].append(time.perf_counter() - start)
    result: dict[str, Any] = {"retrieve_queries": len(problems),
                              "retrieve_examples_mean": round(float(np.mean(shown)), 2)}
    for name, values in times.items():
        prefix = "retrieve" if name == "all" else f"retrieve_{name}"
        result[f"{prefix}_p50_ms"], result[f"{prefix}_p95_ms"] = _ms(values, 50), _ms(values, 95)
    result["retrieve_cpu_p50_ms"], result["retrieve_cpu_p95_ms"] = _ms(cpu, 50), _ms(cpu, 95)
    return result


def _searches(store: Any, exact: Any, queries: npt.NDArray[np.float32], problems: Sequence[_Problem], k: int
              ) -> dict[str, Any]:
    """Each search the retrieval makes, timed, with raw recall@k against exact search over the same vectors; and the
    widening search of the examples (the path before the indexes) on the same store."""
    from procmem.memory.base import EXAMPLES, PROBLEMS, search_distinct

    out: dict[str, Any] = {}
    searches = {
        "examples": (lambda s, q: s.query_distinct(EXAMPLES, q, k=k)),
        "problems": (lambda s, q: s.query_distinct(PROBLEMS, q, k=k)),
        "experience_unfiltered": (lambda s, q: s.query_vector("experience", q, k=k)),
    }
    for name, search in searches.items():
        times, recall, ties = [], [], []
        for query in queries:
            start = time.perf_counter()
            got = search(store, query)
            times.append(time.perf_counter() - start)
            want = search(exact, query)
            if not want:
                continue
            recall.append(len({h.record.id for h in got} & {h.record.id for h in want}) / len(want))
            kth = min(h.similarity for h in want)
            ties.append(min(1.0, sum(h.similarity >= kth - 1e-5 for h in got) / len(want)))
        out[name] = {"p50_ms": _ms(times, 50), "p95_ms": _ms(times, 95),
                     "recall_at_k": round(float(np.mean(recall)), 4),
                     "recall_at_k_ties_counted": round(float(np.mean(ties)), 4)}
    calls: list[int] = []
    real = store.query_vector

    def counted(*a: Any, **kw: Any) -> Any:
        calls[-1] += 1
        return real(*a, **kw)

    store.query_vector = counted
    times = []
    try:
        for query in queries:
            calls.append(0)
            start = time.perf_counter()
            search_distinct(store, EXAMPLES, query, k=k)
            times.append(time.perf_counter() - start)
    finally:
        del store.query_vector
    out["widening_examples"] = {"p50_ms": _ms(times, 50), "p95_ms": _ms(times, 95),
                                "searches_mean": round(float(np.mean(calls)), 2), "searches_max": max(calls)}
    out["query_kinds"] = {"held_out": sum(p.split == "test" for p in problems),
                          "in_memory": sum(p.split != "test" for p in problems)}
    return out


def _ms(times: list[float], pct: int) -> float:
    return round(float(np.percentile(times, pct)) * 1000, 3)


def _print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"retrieval latency, k={results['k']}, {results['queries']} queries (ms)")
    for column in ("entries", "search", "ef_search", "filter", "chroma p50", "chroma p95", "numpy p50", "numpy p95",
                   "p95 ratio", "recall@k", "recall (ties)"):
        table.add_column(column, justify="right")
    for row in results["latency"]:
        for by_ef, name in [(m, name) for m in row["by_ef_search"] for name in ("unfiltered", "filtered")]:
            r = by_ef[name]
            table.add_row(str(row["entries"]), row["search"], str(by_ef["ef_search"]), name,
                          str(r["chroma_p50_ms"]), str(r["chroma_p95_ms"]),
                          str(r["numpy_p50_ms"]), str(r["numpy_p95_ms"]), str(r["p95_ratio_chroma_over_numpy"]),
                          str(r["chroma_recall_at_k"]), str(r["chroma_recall_at_k_ties_counted"]))
    console = Console(stderr=True)
    console.print(table)
    console.print(f"writes: {results.get('writes', 'skipped')}", highlight=False)


if __name__ == "__main__":
    main()
