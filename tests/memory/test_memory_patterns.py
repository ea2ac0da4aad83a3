"""Level 3: insights clustered across problems become patterns backed by verifier outcomes (real Chroma,
MiniLM; summaries by the scripted policy of memory_helpers, labelled as such)."""

from __future__ import annotations

import numpy as np
from memory_helpers import SUM_PATTERN, SUMS, ScriptedPolicy, entry, episode

from procmem.memory import MemoryConfig, ProceduralMemory
from procmem.memory._consolidation import cluster_insights
from procmem.memory.config import ReflectionConfig

DIGITS_A = "Answer with the number only, without any words."
DIGITS_B = "Give only the final number as the answer, no extra words."  # MiniLM cosine 0.74 to DIGITS_A
SPELLING = "Reverse the word letter by letter, starting from the last letter."


def test_advice_recurring_on_two_problems_becomes_a_pattern_citing_both(pmem: ProceduralMemory) -> None:
    a = entry(DIGITS_A, problem="p-a", episodes=("e1",))
    b = entry(DIGITS_B, problem="p-b", episodes=("e2", "e3"))
    pmem.write_entry(a)
    pmem.write_entry(b)
    pmem.write_entry(entry(SPELLING, problem="p-c"))
    policy = ScriptedPolicy()
    report = pmem.consolidate(policy)
    assert (report.pattern_clusters, report.pattern_calls, report.patterns_added) == (1, 1, 1)
    [pattern] = pmem.entries("pattern")
    assert pattern.kind == "pattern" and pattern.method == "summary"
    assert pattern.text == SUM_PATTERN.strip() and pattern.reflector == "scripted-policy@base"
    assert pattern.problem_ids == ("p-a", "p-b")
    assert set(pattern.source_entry_ids) == {a.id, b.id}
    assert set(pattern.source_episode_ids) == {"e1", "e2", "e3"}
    assert set(pattern.evidence) == {"p-a", "p-b"}, "backed by verifier outcomes on each problem it cites"
    assert DIGITS_A in policy.prompts[0] and DIGITS_B in policy.prompts[0] and SPELLING not in policy.prompts[0]


def test_advice_from_a_single_problem_is_not_a_pattern(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(DIGITS_A, problem="p-a"))
    pmem.write_entry(entry(DIGITS_B, problem="p-a"))
    report = pmem.consolidate(ScriptedPolicy())
    assert report.pattern_clusters == 0 and pmem.stats()["pattern"] == 0


def test_consolidation_is_idempotent(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(DIGITS_A, problem="p-a"))
    pmem.write_entry(entry(DIGITS_B, problem="p-b"))
    pmem.consolidate(ScriptedPolicy())
    again = pmem.consolidate(ScriptedPolicy())
    assert again.patterns_known == 1 and again.pattern_calls == 0 and pmem.stats()["pattern"] == 1


def test_an_unusable_or_off_topic_summary_falls_back_to_the_medoid_insight(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(DIGITS_A, problem="p-a"))
    pmem.write_entry(entry(DIGITS_B, problem="p-b"))
    noise = ScriptedPolicy(lambda prompt: " ĠĠ ## 12 12 ĊĊ")
    report = pmem.consolidate(noise)
    assert report.pattern_calls == 1 and report.patterns_unparseable == 1
    [pattern] = pmem.entries("pattern")
    assert pattern.method == "extractive" and pattern.text in (DIGITS_A, DIGITS_B)
    assert pattern.reflector == "extractive"

    pmem.write_entry(entry(SPELLING, problem="p-c"))
    pmem.write_entry(entry("Read the word backwards, one letter after another.", problem="p-d"))
    off_topic = ScriptedPolicy(lambda prompt: " The weather in Paris is lovely in the spring.")
    assert pmem.consolidate(off_topic).patterns_unparseable == 1
    assert all(p.method == "extractive" for p in pmem.entries("pattern"))


def test_without_a_model_or_budget_patterns_are_extractive(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(DIGITS_A, problem="p-a"))
    pmem.write_entry(entry(DIGITS_B, problem="p-b"))
    report = pmem.consolidate(ScriptedPolicy(), max_calls=0)
    assert report.pattern_calls == 0 and report.patterns_added == 1
    assert pmem.entries("pattern")[0].method == "extractive"


def test_leader_clustering_is_deterministic_and_respects_the_threshold() -> None:
    entries = [entry(f"advice number {i}", problem=f"p{i}") for i in range(4)]
    vectors = np.array([[1, 0, 0], [0.95, 0.31, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    clusters = cluster_insights(entries, vectors, threshold=0.9)
    groups = {c.member_ids for c in clusters}
    assert groups == {frozenset([entries[0].id, entries[1].id]), frozenset([entries[2].id]),
                      frozenset([entries[3].id])}
    reversed_order = cluster_insights(entries[::-1], vectors[::-1], 0.9)
    assert [c.member_ids for c in reversed_order] == [c.member_ids for c in clusters], "input order must not matter"
    assert len(cluster_insights(entries, vectors, threshold=0.99)) == 4


def test_reflect_then_consolidate_end_to_end(minilm: object, tmp_path: object) -> None:
    """The batch job on recorded episodes: insights per problem, then a pattern across problems."""
    from procmem.memory import open_memory

    config = MemoryConfig(reflection=ReflectionConfig(batch_size=2))
    memory = open_memory(tmp_path / "m", embedder=minilm, config=config)  # type: ignore[operator]
    for task_id, prompt, answers in SUMS:
        memory.record(episode(task_id, prompt, answers))
    report = memory.reflect(ScriptedPolicy())
    counts = memory.status_counts()
    assert counts["insight"] > 0 and counts["pattern"] > 0
    assert report.total_calls == report.calls + report.pattern_calls == 3 + report.pattern_calls
    for pattern in memory.entries("pattern"):
        assert len(pattern.problem_ids) >= 2
