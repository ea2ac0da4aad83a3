"""Retrieval for a task over all three levels (real Chroma, MiniLM): what is found, the budget, the
deterministic order, the one renderer, and split isolation."""

from __future__ import annotations

import pytest
from memory_helpers import entry, episode

from procmem.core import Episode, Task
from procmem.core.keys import problem_key
from procmem.memory import ProceduralMemory, Retriever
from procmem.memory._entries import suite_family
from procmem.memory._retrieval import (
    ADVICE_HEADER,
    Advice,
    MemoryContext,
    WorkedExample,
    fit_context,
    render_memory,
)

SUM, SPELL = "What is 23 + 45?", "Spell the word 'house' backwards."
CARRY = "Add the ones digits first, then carry into the tens."
REVERSE = "Reverse the word one letter at a time, starting from the end."
DIGITS = "Answer with the final number only, written in digits."


def _task(prompt: str = "What is 52 + 36?", split: str = "train") -> Task:
    return Task(id="new", prompt=prompt, verifier="exact:88", suite="rg:chain_sum", split=split)  # type: ignore[arg-type]


@pytest.fixture
def filled(pmem: ProceduralMemory) -> ProceduralMemory:
    """Two solved train problems, an insight on each, and one pattern."""
    pmem.record(episode("sum", SUM, ["sixty-eight", "68"], finished_at="2026-01-01T00:00:00.000+00:00"))
    pmem.record(episode("spell", SPELL, ["esuoh"], suite="rg:spell_backward",
                        finished_at="2026-01-02T00:00:00.000+00:00"))
    pmem.write_entry(entry(CARRY, problem=problem_key(SUM)))
    pmem.write_entry(entry(REVERSE, problem=problem_key(SPELL)))
    pmem.write_entry(entry(DIGITS, kind="pattern", problem=problem_key(SUM)))
    return pmem


def test_a_task_gets_nearest_insights_patterns_and_worked_examples(filled: ProceduralMemory) -> None:
    retriever = filled.retriever()
    assert isinstance(retriever, Retriever)
    found = retriever.retrieve(_task(), 1)
    sum_episode = filled.episodes(task_id="sum")[0]
    assert found.text == (f"{ADVICE_HEADER}\nPattern: {DIGITS}\nStrategy: {CARRY}\n\n"
                          f"Question: {SUM}\nAnswer: 68")
    assert found.entry_ids == (entry(DIGITS, kind="pattern", problem=problem_key(SUM)).id,
                               entry(CARRY, problem=problem_key(SUM)).id, sum_episode.id)
    assert retriever.retrieve(_task(), 1) == found, "retrieval must be deterministic"
    assert REVERSE not in found.text, "the spelling problem is not near a sum"
    assert retriever.retrieve(_task(), 0).entry_ids == ()


def test_the_budget_keeps_the_most_relevant_of_each_section_first(filled: ProceduralMemory) -> None:
    full = filled.retriever().retrieve(_task(), 2)
    small = filled.retriever(max_chars=90).retrieve(_task(), 2)
    assert 0 < len(small.text) <= 90 < len(full.text)
    assert len(small.entry_ids) < len(full.entry_ids)
    assert filled.retriever(max_chars=5).retrieve(_task(), 2).text == ""


def test_the_agent_and_distill_share_one_renderer(filled: ProceduralMemory) -> None:
    task = _task()
    context = filled.context_for(task, 2)
    fitted = fit_context(context, max_chars=2000)
    found = filled.retriever(max_chars=2000).retrieve(task, 2)
    assert found.text == render_memory(fitted, max_chars=2000) == render_memory(context, max_chars=2000)
    assert found.entry_ids == fitted.entry_ids


def test_rendering_orders_sections_and_puts_the_nearest_example_last() -> None:
    context = MemoryContext(
        examples=(WorkedExample("e1", "Q near?", "1"), WorkedExample("e2", "Q far?", "2")),
        insights=(Advice("i1", "lesson", "Do not guess → compute."),),
        patterns=(Advice("p1", "pattern", "Show only the number."),),
    )
    assert render_memory(context) == (f"{ADVICE_HEADER}\nPattern: Show only the number.\nLesson: Do not guess → "
                                       "compute.\n\nQuestion: Q far?\nAnswer: 2\n\nQuestion: Q near?\nAnswer: 1")
    assert context.entry_ids == ("p1", "i1", "e1", "e2")
    assert render_memory(MemoryContext()) == ""


def test_advice_that_repeats_chosen_advice_is_left_out() -> None:
    context = MemoryContext(
        insights=(Advice("i1", "lesson", "Answer  with digits only."), Advice("i2", "strategy", "Add carefully.")),
        patterns=(Advice("p1", "pattern", "answer with digits only."),),  # extracted from i1: the same words
    )
    fitted = fit_context(context)
    assert fitted.entry_ids == ("i1", "i2") and render_memory(context).count("igits only") == 1


def test_held_out_entries_never_reach_any_task(filled: ProceduralMemory) -> None:
    secret = "Held-out advice: the answer to every test sum is eighty-eight."
    filled.write_entry(entry(secret, problem=problem_key(SUM), split="test"))
    filled.write_entry(entry(secret, kind="pattern", split="test"))
    filled.record(episode("t-sum", "What is 52 + 36?", ["88"], split="test"))
    for split in ("train", "test"):
        found = filled.retriever().retrieve(_task("What is 52 + 37?", split=split), 3)
        assert "eighty-eight" not in found.text and "Answer: 88" not in found.text
        assert CARRY in found.text


def test_a_test_task_never_sees_its_own_problem_even_when_train_holds_it(filled: ProceduralMemory) -> None:
    found = filled.retriever().retrieve(_task(SUM, split="test"), 3)
    assert CARRY not in found.text and "Answer: 68" not in found.text
    assert DIGITS in found.text  # patterns are general; they cite train problems only


def test_a_test_task_never_sees_an_insight_merged_across_its_own_problem(filled: ProceduralMemory) -> None:
    from dataclasses import replace

    near = "What is 23 + 46?"
    filled.record(episode("near", near, ["69"]))
    merged = replace(entry("Line the digits up by place value.", problem=problem_key(near)),
                     problem_ids=(problem_key(near), problem_key(SUM)))
    filled.write_entry(merged)
    assert "place value" in filled.retriever().retrieve(_task(SUM, split="train"), 3).text
    assert "place value" not in filled.retriever().retrieve(_task(SUM, split="test"), 3).text


def test_retired_entries_are_never_retrieved(filled: ProceduralMemory) -> None:
    carry = entry(CARRY, problem=problem_key(SUM))
    filled.store.update("insight", [carry.id], lambda r: {"status": "retired"})
    assert CARRY not in filled.retriever().retrieve(_task(), 2).text


def test_entries_the_current_policy_validated_rank_first(filled: ProceduralMemory) -> None:
    old = entry("Write the digits of the sum from left to right.", problem=problem_key(SUM), policy="gemma@v1")
    new = entry("Check the sum by subtracting one of the numbers.", problem=problem_key(SUM), policy="gemma@v2")
    filled.write_entry(old)
    filled.write_entry(new)
    filled.config = filled.config.model_copy(update={"retrieval": filled.config.retrieval.model_copy(
        update={"insights": 1})})
    assert filled.context_for(_task(), 0, policy="gemma@v2").insights[0].id == new.id
    assert filled.context_for(_task(), 0, policy="gemma@v1").insights[0].id == old.id


def test_a_merged_insight_is_found_from_any_of_its_problems(pmem: ProceduralMemory) -> None:
    other = "What is 61 + 27?"
    pmem.record(episode("sum", SUM, ["68"]))
    pmem.record(episode("other", other, ["88"]))
    pmem.write_entry(entry(CARRY, problem=problem_key(SUM)))
    assert pmem.write_entry(entry(CARRY + " ", problem=problem_key(other))) == "merged"
    pmem.config = pmem.config.model_copy(update={"retrieval": pmem.config.retrieval.model_copy(
        update={"nearest_problems": 1})})
    near_other = _task("What is 61 + 28?")
    assert problem_key(other) in [problem_key(e.task.prompt) for e in pmem.similar_successes(near_other, 1)]
    assert CARRY in pmem.retriever().retrieve(near_other, 1).text


_STORE_METHODS = ("query", "query_vector", "query_distinct", "scan", "get", "count", "page", "upsert",
                  "upsert_vectors", "update", "delete")


def _count_calls(store: object, calls: list[tuple[str, str]]) -> None:
    """Wrap the real store instance's methods (the store still does the work) so that each call is recorded as
    (method, level or index name); a fallback inside the store that calls its own methods is recorded too."""
    for name in _STORE_METHODS:
        method = getattr(store, name, None)
        if method is None:
            continue

        def wrapper(*args: object, _name: str = name, _method: object = method, **kwargs: object) -> object:
            first = args[0] if args else None
            calls.append((_name, str(getattr(first, "name", first))))
            return _method(*args, **kwargs)  # type: ignore[operator]

        setattr(store, name, wrapper)


def _repeatedly_solved(n: int) -> list[Episode]:
    """``n`` train episodes over at least 4 sum problems, each solved n/problems times (the first 60% of the rounds
    pass, the rest fail): the nearest episodes to any sum are mostly repeats of one problem, which used to make
    retrieval widen its search."""
    problems = max(n // 20, 4)
    rounds = n // problems
    return [episode(f"s{i % problems}", f"What is {i % problems} + {i % problems + 7}?",
                    [str(2 * (i % problems) + 7)], passed=i // problems < 0.6 * rounds) for i in range(n)]


@pytest.mark.parametrize("search", ["exact-mirror", "hnsw"])
@pytest.mark.parametrize("episodes", [20, 2000])
def test_one_retrieval_makes_the_same_few_store_calls_at_any_size(pmem: ProceduralMemory, episodes: int, search: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import chromadb.api.models.Collection as chroma_collection

    from procmem.memory import chroma_store

    if search == "hnsw":  # every level in Chroma's HNSW index, as beyond 5,000 entries
        monkeypatch.setattr(chroma_store, "EXACT_MAX", 0)
    own = [episode("sum", SUM, ["68"], passed=i < 30) for i in range(40)]  # the task itself, solved 30 times
    pmem.record_many([*_repeatedly_solved(episodes), *own])
    for i in range(3):
        pmem.write_entry(entry(f"{CARRY} Case {i}.", problem=problem_key(f"What is {i} + {i + 7}?")))
    pmem.write_entry(entry(CARRY, problem=problem_key(SUM)))
    pmem.write_entry(entry(DIGITS, kind="pattern", problem=problem_key(SUM)))
    retriever = pmem.retriever()
    retriever.retrieve(_task(SUM), 3)  # warm: the mirrors load on first use

    calls: list[tuple[str, str]] = []
    _count_calls(pmem.store, calls)
    chroma_queries: list[int] = []
    real_query = chroma_collection.Collection.query

    def counted_query(self: object, *args: object, **kwargs: object) -> object:
        chroma_queries.append(int(kwargs.get("n_results", 0)))  # type: ignore[call-overload]
        return real_query(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chroma_collection.Collection, "query", counted_query)
    found = retriever.retrieve(_task(SUM), 3)

    examples = [line for line in found.text.splitlines() if line.startswith("Question:")]
    assert len(examples) == 3 and f"Question: {SUM}" not in examples, "three other problems, never the task's own"
    assert CARRY in found.text and DIGITS in found.text
    task = _task(SUM)
    scopes = len({task.suite.strip(), suite_family(task.suite)})
    # one search of each index, one of the pattern level, one insight read per nearest problem (the task's own among
    # them: it is a train task), one filtered read per level for each scope the suite is named by; nothing else
    assert sorted(calls) == sorted([
        ("query_distinct", "problems"), ("query_distinct", "examples"), ("query_vector", "pattern"),
        *[("scan", "insight")] * (pmem.config.retrieval.nearest_problems + scopes), *[("scan", "pattern")] * scopes])
    # and inside the store one HNSW query per search, none widened (the mirror answers exactly without any)
    assert len(chroma_queries) == (3 if search == "hnsw" else 0), chroma_queries
    assert max(chroma_queries, default=0) <= 16


def test_the_store_calls_do_not_grow_with_the_memory(pmem: ProceduralMemory) -> None:
    """Pinned across sizes within one memory: a test task's retrieval at 20 episodes and again after the memory grew
    to 2,000 makes the same calls."""
    calls: list[tuple[str, str]] = []
    _count_calls(pmem.store, calls)
    lists, grown = [], _repeatedly_solved(2000)
    for size in (20, 2000):
        pmem.record_many(grown[pmem.stats()["experience"]:size])
        assert pmem.stats()["experience"] == size
        calls.clear()
        found = pmem.retriever().retrieve(_task("What is 3 + 10?", split="test"), 3)
        assert found.text.count("Question:") == 3 and "What is 3 + 10?" not in found.text
        lists.append(sorted(calls))
    assert lists[0] == lists[1]
    assert len(lists[0]) <= 10 and ("query_distinct", "examples") in lists[0]


def test_one_retrieval_takes_the_memory_lock_once(pmem: ProceduralMemory) -> None:
    """The embedded store's file lock costs ~1 ms a call: the retrieval's reads share one session."""
    pmem.record_many(_repeatedly_solved(40))
    pmem.write_entry(entry(CARRY, problem=problem_key("What is 1 + 8?")))
    retriever = pmem.retriever()
    retriever.retrieve(_task(SUM), 3)
    lock = pmem.store._conn._file_lock  # type: ignore[attr-defined]
    real, acquired = lock.acquire, []

    def counted(*args: object, **kwargs: object) -> object:
        acquired.append(1)
        return real(*args, **kwargs)

    lock.acquire = counted
    try:
        found = retriever.retrieve(_task(SUM), 3)
    finally:
        del lock.acquire
    assert found.text.count("Question:") == 3
    assert len(acquired) == 1
