"""Retrieval for a task over all three levels (real Chroma, MiniLM): what is found, the budget, the
deterministic order, the one renderer, and split isolation."""

from __future__ import annotations

import pytest
from memory_helpers import entry, episode

from procmem.core import Task
from procmem.core.keys import problem_key
from procmem.memory import ProceduralMemory, Retriever
from procmem.memory._entries import suite_family
from procmem.memory._retrieval import (
    ADVICE_HEADER,
    Advice,
    MemoryContext,
    ProceduralRetriever,
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


class _CountingStore:
    """The real store, with every call the retriever makes on it recorded as (method, level) and every record
    a scan yields counted: what one retrieval costs, independent of timing."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.calls: list[tuple[str, object]] = []
        self.scanned = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            self.calls.append((name, args[0] if args else None))
            found = attr(*args, **kwargs)
            if name == "scan":
                records = list(found)  # type: ignore[call-overload]
                self.scanned += len(records)
                return iter(records)
            return found

        return call


@pytest.mark.parametrize("episodes", [20, 400])
def test_one_retrieval_makes_the_same_few_store_calls_at_any_size(pmem: ProceduralMemory, episodes: int) -> None:
    pmem.record_many([episode(f"s{i}", f"What is {i} + {i + 7}?", [str(2 * i + 7)]) for i in range(episodes)])
    pmem.record(episode("sum", SUM, ["68"]))
    pmem.write_entry(entry(CARRY, problem=problem_key(SUM)))
    pmem.write_entry(entry(DIGITS, kind="pattern", problem=problem_key(SUM)))
    counting = _CountingStore(pmem.store)
    found = ProceduralRetriever(counting, pmem.config).retrieve(_task(SUM), 3)  # type: ignore[arg-type]
    assert CARRY in found.text and DIGITS in found.text and found.text.count("Question:") == 3
    # the same calls whatever the size: one search per level, one insight read per nearest problem, and one
    # filtered read per level for each scope the task's suite can be named by (its spec and its family)
    task = _task(SUM)
    scopes = len({task.suite.strip(), suite_family(task.suite)})
    assert sorted(counting.calls) == sorted([
        ("query_vector", "experience"), ("query_vector", "pattern"),
        *[("scan", "insight")] * (pmem.config.retrieval.nearest_problems + scopes), *[("scan", "pattern")] * scopes])
    assert counting.scanned <= 3, "only the insights of the nearest problems are read"
