"""Hygiene on real Chroma with MiniLM: dedup-merge on write, counters, retirement, size caps, co-evolution."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_helpers import entry, episode

from procmem.memory import MemoryConfig, ProceduralMemory, open_memory
from procmem.memory._hygiene import should_retire, trust
from procmem.memory.config import HygieneConfig
from procmem.memory.embedding import MiniLMEmbedder

CARRY = "Add the ones digits first, then carry into the tens."
CARRY_PARAPHRASE = "Add the units digits first and carry to the tens digit."  # MiniLM cosine 0.91
DIGITS = "Answer with the number only, written in digits."


def _memory(minilm: MiniLMEmbedder, path: Path, **hygiene: object) -> ProceduralMemory:
    return open_memory(path, embedder=minilm, config=MemoryConfig(hygiene=HygieneConfig(**hygiene)))


@pytest.fixture
def strict(minilm: MiniLMEmbedder, tmp_path: Path) -> Iterator[ProceduralMemory]:
    """Retire after 3 uses at a 3:1 harm ratio, or after 2 failures of a newer policy."""
    memory = _memory(minilm, tmp_path / "strict", retire_min_uses=3, retire_ratio=3.0, stale_failures=2)
    yield memory
    memory.close()


# --- dedup on write -----------------------------------------------------------------------------------


def test_a_near_duplicate_merges_keeping_both_provenances_and_adding_counters(pmem: ProceduralMemory) -> None:
    first = entry(CARRY, problem="p-a", episodes=("e1", "e2"), helpful=2, harmful=1, uses=3)
    second = entry(CARRY_PARAPHRASE, problem="p-b", episodes=("e3",), helpful=1, uses=4, updated_at="2026-02-01")
    assert pmem.write_entry(first) == "added"
    assert pmem.write_entry(second) == "merged"
    [merged] = pmem.entries("insight")
    assert merged.id == first.id and merged.text == CARRY
    assert merged.problem_ids == ("p-a", "p-b") and merged.problem == "p-a"
    assert merged.source_episode_ids == ("e1", "e2", "e3") and merged.merged_ids == (second.id,)
    assert set(merged.evidence) == {"p-a", "p-b"}
    assert (merged.helpful, merged.harmful, merged.uses) == (3, 1, 7)
    assert merged.created_at == "2026-01-01" and merged.updated_at not in ("2026-01-01", "2026-02-01")


def test_different_advice_kinds_or_splits_never_merge(pmem: ProceduralMemory) -> None:
    assert pmem.write_entry(entry(CARRY)) == "added"
    assert pmem.write_entry(entry(DIGITS, problem="p-b")) == "added"  # cosine ~0.4: different advice
    assert pmem.write_entry(entry(CARRY, kind="lesson")) == "added"
    assert pmem.write_entry(entry(CARRY, split="test")) == "added"
    assert pmem.stats()["insight"] == 4


def test_a_retired_entry_does_not_absorb_a_newcomer(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(CARRY, status="retired", harmful=6, uses=6))
    assert pmem.write_entry(entry(CARRY, problem="p-b")) == "added"
    statuses = sorted(e.status for e in pmem.entries("insight"))
    assert statuses == ["active", "retired"]


def test_writing_the_same_entry_again_changes_nothing_but_the_time(pmem: ProceduralMemory) -> None:
    original = entry(CARRY, helpful=2, uses=2)
    pmem.write_entry(original)
    pmem.write_entry(entry(CARRY))  # the same advice again, with zero counters
    [stored] = pmem.entries("insight")
    assert (stored.helpful, stored.uses, stored.merged_ids, stored.problem_ids) == (2, 2, (), ("p-one",))


# --- counters and retirement --------------------------------------------------------------------------


def test_an_episode_that_used_memory_updates_exactly_the_entries_it_used(pmem: ProceduralMemory) -> None:
    used, unused = entry(CARRY), entry(DIGITS, problem="p-b")
    pmem.write_entry(used)
    pmem.write_entry(unused)
    passed = episode("a", "What is 1 + 2?", ["3"], memory_ids=(used.id, "some-episode-id"))
    failed = episode("b", "What is 2 + 2?", ["5"], passed=False, memory_ids=(used.id,))
    assert pmem.after_episode(passed).counted == (used.id,)
    assert pmem.after_episode(failed).counted == (used.id,)
    pmem.after_episode(failed)  # recorded again (a resumed run): not counted twice
    after = pmem.entry(used.id)
    assert after is not None and (after.helpful, after.harmful, after.uses) == (1, 1, 2)
    untouched = pmem.entry(unused.id)
    assert untouched is not None and untouched.uses == 0


def test_harm_that_clearly_outweighs_help_after_enough_uses_retires(strict: ProceduralMemory) -> None:
    bad = entry(CARRY)
    strict.write_entry(bad)
    results = [strict.after_episode(episode(f"f{i}", f"What is {i} + 1?", ["x"], passed=False, memory_ids=(bad.id,)))
               for i in range(3)]
    assert [r.retired for r in results] == [(), (), (bad.id,)]  # (3+1)/(0+1) >= 3 once uses reach 3
    stored = strict.entry(bad.id)
    assert stored is not None and stored.status == "retired"
    assert strict.status_counts()["retired"]["insight"] == 1


def test_mixed_results_do_not_retire() -> None:
    config = HygieneConfig(retire_min_uses=3, retire_ratio=3.0)
    assert not should_retire(helpful=2, harmful=3, uses=5, stale_failures=0, config=config)
    assert not should_retire(helpful=0, harmful=2, uses=2, stale_failures=0, config=config)
    assert should_retire(helpful=1, harmful=5, uses=6, stale_failures=0, config=config)


def test_prune_applies_changed_rules_and_a_dry_run_changes_nothing(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    lenient = _memory(minilm, tmp_path / "m")
    lenient.write_entry(entry(CARRY, harmful=4, uses=4))
    assert lenient.prune().retired == {"insight": 0, "pattern": 0}
    strict = _memory(minilm, tmp_path / "m", retire_min_uses=3)
    assert strict.prune(dry_run=True).retired["insight"] == 1
    assert strict.status_counts()["active"]["insight"] == 1
    assert strict.prune().retired["insight"] == 1
    assert strict.status_counts()["retired"]["insight"] == 1


# --- size caps ----------------------------------------------------------------------------------------


def test_insight_eviction_goes_retired_then_least_trusted_then_oldest(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    memory = _memory(minilm, tmp_path / "m", max_insights=3)
    texts = ["Line up the digits by place value.", "Reverse the word one letter at a time.",
             "Count only the letter that is asked for.", "Convert to base two by halving repeatedly.",
             "Multiply the tens and the ones separately."]
    memory.write_entry(entry(texts[0], problem="a", helpful=5, uses=5))                 # trusted: stays
    memory.write_entry(entry(texts[1], problem="b", status="retired"))                 # retired: goes first
    memory.write_entry(entry(texts[2], problem="c", harmful=2, uses=2))                # least trusted: goes
    memory.write_entry(entry(texts[3], problem="d", updated_at="2026-05-01"))          # fresh, newer: stays
    memory.write_entry(entry(texts[4], problem="e", updated_at="2026-06-01"))          # fresh, newest: stays
    report = memory.prune()
    assert report.evicted["insight"] == 2
    assert sorted(e.text for e in memory.entries("insight")) == sorted([texts[0], texts[3], texts[4]])


def test_experience_eviction_drops_failures_before_successes_oldest_first(minilm: MiniLMEmbedder, tmp_path: Path
                                                                          ) -> None:
    memory = _memory(minilm, tmp_path / "m", max_experiences=2)
    memory.record(episode("old-pass", "What is 1 + 1?", ["2"], finished_at="2026-01-01T00:00:00.000+00:00"))
    memory.record(episode("old-fail", "What is 1 + 2?", ["x"], passed=False,
                          finished_at="2026-01-02T00:00:00.000+00:00"))
    memory.record(episode("new-fail", "What is 1 + 3?", ["x"], passed=False,
                          finished_at="2026-01-03T00:00:00.000+00:00"))
    memory.after_episode(episode("new-pass", "What is 1 + 4?", ["5"], finished_at="2026-01-04T00:00:00.000+00:00"))
    assert sorted(e.task.id for e in memory.episodes()) == ["new-pass", "old-pass"]


# --- co-evolution -------------------------------------------------------------------------------------


def test_entries_of_an_older_policy_are_down_weighted_until_revalidated() -> None:
    config = HygieneConfig(stale_weight=0.5)
    old = entry(CARRY, policy="gemma@v1")
    assert trust(old, "gemma@v1", config) == 1.0
    assert trust(old, "gemma@v2", config) == 0.5
    assert trust(entry(CARRY, policy="gemma@v1", helpful=3, uses=3), "gemma@v1", config) == pytest.approx(1.6)


def test_a_pass_under_the_new_policy_revalidates_and_failures_retire(strict: ProceduralMemory) -> None:
    kept, dropped = entry(CARRY, policy="gemma@v1"), entry(DIGITS, problem="p-b", policy="gemma@v1")
    strict.write_entry(kept)
    strict.write_entry(dropped)
    strict.after_episode(episode("p", "What is 3 + 3?", ["6"], model_id="gemma", adapter="v2", memory_ids=(kept.id,)))
    revalidated = strict.entry(kept.id)
    assert revalidated is not None and revalidated.validated_version == "gemma@v2" and revalidated.status == "active"
    for i in range(2):
        strict.after_episode(episode(f"f{i}", f"What is {i} + 9?", ["x"], passed=False, model_id="gemma",
                                     adapter="v2", memory_ids=(dropped.id,)))
    stale = strict.entry(dropped.id)
    assert stale is not None and stale.validated_version == "gemma@v1"
    assert stale.stale_failures == 2 and stale.status == "retired"


def test_rederiving_an_entry_under_the_new_policy_revalidates_it(pmem: ProceduralMemory) -> None:
    pmem.write_entry(entry(CARRY, policy="gemma@v1"))
    assert pmem.write_entry(entry(CARRY_PARAPHRASE, policy="gemma@v2", problem="p-b")) == "merged"
    [stored] = pmem.entries("insight")
    assert stored.validated_version == "gemma@v2" and stored.policy_version == "gemma@v1"
